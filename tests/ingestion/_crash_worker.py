"""Child process of the crash test: ingest one source into a lake, printing 'ready' once imports are done."""

from __future__ import annotations

import sys
from pathlib import Path


def main(lake_root: str, keyring_path: str, master_hex: str, source: str, path: str) -> None:
    from ingestion.batch import ingest
    from pipeline.lake import Lake
    from pipeline.settings import load_settings
    from storage_security.keys.keyring import LocalKeyring
    from storage_security.protected import ProtectedLake

    settings = load_settings(lake_root=lake_root, ingestion={"chunk_rows": 600})
    plake = ProtectedLake(Lake(settings), LocalKeyring(Path(keyring_path), bytes.fromhex(master_hex)),
                          principal="svc:ingest")
    print("ready", flush=True)
    sys.stdin.readline()  # the parent starts its clock, then says go
    ingest(settings, source=source, path=path, plake=plake, docs=False)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
