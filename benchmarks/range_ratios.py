"""How the ranges of calibration files compare, point by point, with a reference calibration's: for
each file, the smallest, median and largest ratio of its amax to the reference's, and how many points
(by role) get a range more than 3x wider or less than half as wide. Reads files `qtool calibrate`
or `qtool reproduce` wrote. Usage (the figures of docs/calibration.md's entropy and MSE section):

    python benchmarks/range_ratios.py artifacts/<model>/percentile-99.99-all.calib.json \\
        artifacts/<model>/entropy-all.calib.json artifacts/<model>/mse-all.calib.json \\
        artifacts/<model>/max-all.calib.json
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

WIDER, NARROWER = 3.0, 0.5


def main() -> None:
    from qtool.quantization.calibration import load_calibration

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the calibration the others are compared with")
    parser.add_argument("others", type=Path, nargs="+")
    args = parser.parse_args()
    reference = load_calibration(args.reference).tensors
    for path in args.others:
        tensors = load_calibration(path).tensors
        ratios = sorted((tensors[n].amax / reference[n].amax, reference[n].role) for n in reference if n in tensors)
        wider = Counter(role for ratio, role in ratios if ratio > WIDER)
        narrower = Counter(role for ratio, role in ratios if ratio < NARROWER)
        print(
            f"{path.name}: ratio to {args.reference.name} min {ratios[0][0]:.3f} ({ratios[0][1]}), "
            f"median {ratios[len(ratios) // 2][0]:.3f}, max {ratios[-1][0]:.2f} ({ratios[-1][1]})"
        )
        print(f"  more than {WIDER:g}x wider: {sum(wider.values())} {dict(wider)}")
        print(f"  less than {NARROWER:g}x as wide: {sum(narrower.values())} {dict(narrower)}")


if __name__ == "__main__":
    main()
