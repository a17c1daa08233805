"""What a user dropped into the page, as image files with display names: uploads, zips, chosen examples.

A zip is unpacked into the session's folder, one file at a time and within limits (member count,
total size), so a zip bomb or a path like ``../../etc`` cannot escape or fill the disk. Entries that
are not images are not dropped silently: the predictor reports them with a reason, like bad files.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

MAX_ZIP_FILES = 2000
MAX_ZIP_BYTES = 2 * 1024**3


def expand(paths: list[str], workdir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(path on disk, name to show) per image file, and (name, reason) for uploads that could not be unpacked."""
    files, problems = [], []
    for path in paths:
        path = Path(path)
        if path.suffix.lower() != ".zip":
            files.append((str(path), path.name))
            continue
        try:
            files += _unzip(path, workdir / f"zip{len(files)}_{path.stem}")
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            problems.append((path.name, f"the zip cannot be read ({error})"))
    return files, problems


def _unzip(path: Path, target: Path) -> list[tuple[str, str]]:
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")]
        if len(members) > MAX_ZIP_FILES:
            raise ValueError(f"{len(members)} files; at most {MAX_ZIP_FILES} are read from one zip")
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise ValueError(f"it unpacks to more than {MAX_ZIP_BYTES // 1024**3} GB")
        target.mkdir(parents=True, exist_ok=True)
        out = []
        for k, member in enumerate(members):
            name = f"{path.name}/{member.filename}"
            local = target / f"{k:05d}_{Path(member.filename).name}"  # flat: no path from the archive is trusted
            with archive.open(member) as source, open(local, "wb") as sink:
                sink.write(source.read(MAX_ZIP_BYTES))
            out.append((str(local), name))
        return out
