"""Peak memory of `kus import-facts` and of ingest against the size of the input file.

For each size, a fresh home (SQLite, local store, the demo templates) gets a CSV of N changed
prices (1% of the rows refused: unknown relation, empty object, control character); one child
process runs `kus import-facts`, a second runs the ingest step (the GX input suite over the whole
change feed, the ledger, the run). Each child reports its own peak RSS and seconds.

    ./dev.sh bench import_memory                       # 10k, 50k and 100k rows
    ./dev.sh bench import_memory --sizes 1000,100000

Results: bench/results/import_memory.md (+ .json, .png), the table printed as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

RESULTS = Path(__file__).resolve().parent / "results"


def write_facts(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write("subject,relation,object\n")
        for i in range(rows):
            if i % 100 == 37:
                out.write(f"Gadget {i},energy_label,A\n")
            elif i % 100 == 71:
                out.write(f"Gadget {i},price,\n")
            elif i % 100 == 89:
                out.write(f"Gadget {i},colour,red\x1b[0m\n")
            else:
                out.write(f"Gadget {i} Model X{i % 977},price,${i % 1000 + 9}\n")


def child(mode: str, facts_file: str) -> None:
    started = time.perf_counter()
    if mode == "import":
        from flows.cli import main

        code = main(["--quiet", "import-facts", facts_file])
        detail = {"exit": code}
    else:
        from infra.context import service_context
        from tasks.ingest import ingest_changes

        with service_context() as ctx:
            outcome = ingest_changes(ctx, "demo", "saul", "bench")
        detail = {"accepted": outcome.accepted, "rejected": outcome.rejected, "outstanding": outcome.outstanding}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "peak_rss_mb": round(peak_mb, 1),
                      "seconds": round(time.perf_counter() - started, 1), **detail}))


def measure(rows: int, work: Path) -> dict:
    home = work / f"home-{rows}"
    facts_file = work / f"facts-{rows}.csv"
    write_facts(facts_file, rows)
    env = dict(os.environ, KUS_HOME=str(home), KUS_PREFECT_OWNER="")
    out: dict = {"rows": rows, "file_mb": round(facts_file.stat().st_size / 2**20, 2)}
    for mode in ("import", "ingest"):
        proc = subprocess.run([sys.executable, __file__, "--child", mode, str(facts_file)], env=env,
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} of {rows} rows failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out[f"{mode}_peak_rss_mb"] = result["peak_rss_mb"]
        out[f"{mode}_seconds"] = result["seconds"]
        if mode == "ingest":
            out["accepted"], out["rejected"] = result["accepted"], result["rejected"]
    return out


def report(results: list[dict], command: str) -> None:
    lines = [
        "# Peak memory of import and ingest against input size",
        "",
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU; `{command}`. Each step is a fresh process on a",
        "fresh home (SQLite, local store); peak RSS is the process's own maximum (it includes Python,",
        "SQLAlchemy, pandas and Great Expectations, whatever the input).",
        "",
        "| rows | file MB | import peak RSS MB | import s | ingest peak RSS MB | ingest s | accepted | rejected |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['file_mb']} | {r['import_peak_rss_mb']} | {r['import_seconds']} | "
                     f"{r['ingest_peak_rss_mb']} | {r['ingest_seconds']} | {r['accepted']:,} | {r['rejected']:,} |")
    (RESULTS / "import_memory.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "import_memory.json").write_text(json.dumps(results, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    sizes = [r["rows"] for r in results]
    ax.plot(sizes, [r["import_peak_rss_mb"] for r in results], "o-", label="import-facts")
    ax.plot(sizes, [r["ingest_peak_rss_mb"] for r in results], "s-", label="ingest")
    ax.set_xlabel("rows in the file")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("Peak memory against input size")
    fig.tight_layout()
    fig.savefig(RESULTS / "import_memory.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="kus-import-bench-") as tmp:
        for rows in (int(s) for s in args.sizes.split(",")):
            results.append(measure(rows, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
            report(results, "./dev.sh bench import_memory " + " ".join(sys.argv[1:]))
    print((RESULTS / "import_memory.md").read_text())


if __name__ == "__main__":
    main()
