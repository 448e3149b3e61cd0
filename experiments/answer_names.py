"""Does the model name what was asked? Compare the `<p>name</p>` lists of the generated answers
(an evaluation's `*_records.jsonl`) with the ground-truth answers of the synthetic raw set, per
subset, and print the demo's record (the first semantic test record, as `run.sh demo` picks it).

    python experiments/answer_names.py demo_out/eval demo_out/synthetic_raw

A record counts as right when the generated names equal the GT names in order; `set` ignores
the order and `singular` also plural/singular (a trailing 's').
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

NAME = re.compile(r"<p>(.*?)</p>")


def names(text: str) -> list[str]:
    return NAME.findall(text)


def _singular(xs: list[str]) -> set[str]:
    return {x[:-1] if x.endswith("s") else x for x in xs}


def compare(eval_dir: Path, raw: Path, split: str = "test") -> dict:
    records = {}
    for path in eval_dir.glob("*_records.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            records[r["id"]] = r["answer"]
    out = {}
    for ann in sorted((raw / split / "annotations").glob("*.json")):
        subset = ann.stem
        n = exact = as_set = singular = 0
        for rec in json.loads(ann.read_text()):
            rid = f"{subset}/{Path(rec['image_name']).stem}"
            if rid not in records:
                continue
            gt, got = names(rec["answer"]), names(records[rid])
            n += 1
            exact += gt == got
            as_set += set(gt) == set(got)
            singular += _singular(gt) == _singular(got)
        if n:
            out[subset] = dict(n=n, exact=exact, set=as_set, singular=singular)
    first = json.loads((raw / split / "annotations" / "semantic.json").read_text())[0]
    rid = f"semantic/{Path(first['image_name']).stem}"
    out["demo_record"] = dict(id=rid, description=first["description"], gt=first["answer"],
                              answer=records.get(rid))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("raw", type=Path)
    ap.add_argument("--split", default="test")
    a = ap.parse_args()
    result = compare(a.eval_dir, a.raw, a.split)
    demo = result.pop("demo_record")
    total = {k: sum(v[k] for v in result.values()) for k in ("n", "exact", "set", "singular")}
    print(f"{'subset':10s} {'n':>5s} {'exact':>6s} {'set':>6s} {'sing.':>6s}")
    for subset, v in [*result.items(), ("all", total)]:
        print(f"{subset:10s} {v['n']:5d} " + " ".join(
            f"{100 * v[k] / v['n']:5.1f}%" for k in ("exact", "set", "singular")))
    print(f"demo record {demo['id']}: {demo['description']!r}\n  GT:  {demo['gt']}\n"
          f"  got: {demo['answer']}")


if __name__ == "__main__":
    main()
