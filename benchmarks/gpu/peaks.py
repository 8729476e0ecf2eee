"""The device's measured peaks, which the roofline and MFU figures divide by: memory bandwidth from a large
device-to-device copy (bytes read plus written) and the bf16 rate of a large `torch.matmul` on random data.

    python benchmarks/gpu/peaks.py --out /tmp/rs_gpu/parts [--smoke]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import measure_bandwidth, measure_matmul, pick_device, write_result  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    device = pick_device(args.smoke)
    result = {**measure_bandwidth(device, args.smoke), **measure_matmul(device, args.smoke), "smoke": args.smoke}
    print(
        f"bandwidth: {result['copy_bytes_moved'] / 2**30:.2f} GiB moved (read + write) in "
        f"{result['copy_seconds'] * 1e3:.3f} ms = {result['bandwidth_bytes_per_s'] / 1e12:.3f} TB/s\n"
        f"bf16 matmul: 2 x {result['matmul_n']}^3 FLOP in {result['matmul_seconds'] * 1e3:.3f} ms = "
        f"{result['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s",
        flush=True,
    )
    write_result(args.out, "peaks", result)


if __name__ == "__main__":
    main()
