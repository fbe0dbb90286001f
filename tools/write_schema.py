"""Regenerates configs/schema.json from the config models: python tools/write_schema.py"""

from pathlib import Path

from edgecomp import config

if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "configs" / "schema.json"
    config.write_schema(path)
    print(f"wrote {path}")
