"""De-identification at population scale: a generated population's patients and notes sealed in raw, then
``Deidentifier.publish_all`` (what ``medguard deidentify`` runs) over both, timed; then a second run with no new
batch (no decryption expected).

Usage: ``python bench/deid_scale_bench.py --patients 20000 [--processes 2]``. Prints one JSON line per step.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "storage_security" / "deid"))


def main(argv: list[str] | None = None) -> None:
    import argparse

    from _deid_raw import load_raw

    from pipeline.lake import Lake
    from pipeline.settings import get_settings
    from pipeline.synthetic import generate
    from storage_security.audit.log import AuditAction
    from storage_security.deid.deidentify import Deidentifier
    from storage_security.keys.keyring import LocalKeyring
    from storage_security.protected import ProtectedLake

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="medguard-deid-scale-"))
    started = time.perf_counter()
    source = root / "population"
    generate(source, patients=args.patients, seed=7, formats=["parquet", "notes"], defect_rate=0.0)
    print(json.dumps({"step": "generate", "patients": args.patients, "s": round(time.perf_counter() - started, 1)}),
          flush=True)
    settings = get_settings()
    settings = settings.model_copy(update={
        "lake_root": str(root / "lake"),
        "deidentify": settings.deidentify.model_copy(update={"processes": args.processes})})
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key("medguard-kek")
    ring.ensure_key("medguard-audit")
    lake = Lake(settings)
    plake = ProtectedLake(lake, ring, principal="svc:deidentify")
    started = time.perf_counter()
    frames = load_raw(plake, source, ("patients", "notes"))
    print(json.dumps({"step": "load raw", "notes": len(frames["notes"]), "s": round(time.perf_counter() - started, 1)}),
          flush=True)
    deid = Deidentifier(plake, settings)
    for run in ("first", "second"):
        mark = max((r.seq for r in plake.audit.events()), default=0)
        started = time.perf_counter()
        reports = deid.publish_all()
        decrypts = sum(1 for r in plake.audit.events() if r.seq > mark and r.event.action == AuditAction.DECRYPT)
        print(json.dumps({"step": f"publish ({run} run)", "s": round(time.perf_counter() - started, 1),
                          "decrypt_events": decrypts,
                          "tables": {t: {k: r.get(k) for k in ("publication", "rows_in", "rows_out", "refused",
                                                               "notes_detection", "version")}
                                     for t, r in reports.items()}}, default=str), flush=True)


if __name__ == "__main__":
    main()
