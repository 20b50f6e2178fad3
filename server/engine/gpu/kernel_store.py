"""Prebuilt cubins inside an engine directory, so `inflightd serve DIR` needs no NVRTC.

    DIR/kernels/manifest.json
    DIR/kernels/<arch>/<module>.cubin        e.g. kernels/sm_90/paged_attention_d128.cubin

The manifest records, per arch and module, the cubin's sha256 and the hash of the csrc/
sources it was built from: a cubin built from other sources may take other arguments, so
loading refuses it rather than launching it wrongly. An engine holds the modules its model
needs (the attention modules of its head_dim only); a module it lacks is compiled by NVRTC
when first used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from server.engine.gpu.nvrtc import CSRC_DIR, nvrtc_version, source_hash

# 2: the attention modules split per head_dim (paged_attention_d128, ...); format 1 engines
# hold the all-head-dim paged_attention and paged_attention_fp8 cubins, modules that are gone
MANIFEST_FORMAT = 2


class KernelStoreError(ValueError):
    """An engine directory's cubins are missing, corrupt, or built from other sources."""


def save_cubins(engine_dir: Path, arch: str, cubins: Mapping[str, bytes], *,
                csrc_dir: Path = CSRC_DIR) -> Path:
    """Writes the cubins of one arch and merges them into the manifest; returns its path."""
    kernels_dir = Path(engine_dir) / "kernels"
    (kernels_dir / arch).mkdir(parents=True, exist_ok=True)
    manifest_path = kernels_dir / "manifest.json"
    manifest = _read_manifest(manifest_path) if manifest_path.is_file() else {
        "format": MANIFEST_FORMAT, "arches": {}}
    major, minor = nvrtc_version()
    modules = {}
    for name, cubin in sorted(cubins.items()):
        relative = f"{arch}/{name}.cubin"
        (kernels_dir / relative).write_bytes(cubin)
        modules[name] = {"file": relative, "sha256": hashlib.sha256(cubin).hexdigest(),
                         "source_sha256": source_hash(name, csrc_dir)}
    manifest["arches"][arch] = {"nvrtc": f"{major}.{minor}", "modules": modules}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest_path


def load_cubins(engine_dir: Path, arch: str, *, csrc_dir: Path = CSRC_DIR) -> dict[str, bytes]:
    """{module: cubin} for `arch`, each checked against the manifest and the sources."""
    kernels_dir = Path(engine_dir) / "kernels"
    manifest_path = kernels_dir / "manifest.json"
    if not manifest_path.is_file():
        raise KernelStoreError(f"{engine_dir} has no kernels/manifest.json; rebuild it with "
                               "`inflightd build`")
    arches = _read_manifest(manifest_path)["arches"]
    if arch not in arches:
        raise KernelStoreError(f"{engine_dir} has cubins for {sorted(arches)} but this GPU is "
                               f"{arch}; rebuild the engine for {arch}")
    cubins = {}
    for name, entry in arches[arch]["modules"].items():
        cubin = (kernels_dir / entry["file"]).read_bytes()
        if hashlib.sha256(cubin).hexdigest() != entry["sha256"]:
            raise KernelStoreError(f"{kernels_dir / entry['file']} does not match its manifest "
                                   "checksum; the engine directory is damaged")
        try:
            current_hash = source_hash(name, csrc_dir)
        except FileNotFoundError:
            raise KernelStoreError(f"{engine_dir} has a {name} cubin, a kernel this inflightd "
                                   "no longer has; rebuild the engine with `inflightd build`"
                                   ) from None
        if current_hash != entry["source_sha256"]:
            raise KernelStoreError(f"the {name} cubin in {engine_dir} was built from other "
                                   "kernel sources than this inflightd's; rebuild the engine")
        cubins[name] = cubin
    return cubins


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KernelStoreError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != MANIFEST_FORMAT or "arches" not in manifest:
        raise KernelStoreError(f"{path} has format {manifest.get('format')!r}; this inflightd "
                               f"reads format {MANIFEST_FORMAT}: rebuild the engine with "
                               "`inflightd build`")
    return manifest
