"""``fdo keys``: generate the signing keys FDO uses (manufacturer, owner, device CA)."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fdo.crypto import generate_key, private_key_to_pem, public_key_to_pem, spki_der
from fdo.types import Hash, HashType

app = typer.Typer(no_args_is_help=True, help="Generate and inspect FDO keys.")


class KeyType(StrEnum):
    """Key kinds FDO uses (reference §2.2)."""

    EC256 = "ec256"
    EC384 = "ec384"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"


def write_new_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` with permissions ``mode``; refuse to overwrite unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if not force:
        flags |= os.O_EXCL
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # os.open applies mode only when it creates the file
        os.write(fd, data)
    finally:
        os.close(fd)


@app.command()
def generate(
    kind: Annotated[KeyType, typer.Option("--type", help="Key type.", case_sensitive=False)],
    out: Annotated[Path, typer.Option("--out", help="Private key file (PKCS#8 PEM, mode 0600).")],
    public_out: Annotated[
        Path | None, typer.Option("--public-out", help="Also write the public key (PEM).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Generate a private key (and optionally write its public key)."""
    targets = [out] if public_out is None else [out, public_out]
    if public_out is not None and public_out.resolve() == out.resolve():
        typer.echo("error: --out and --public-out name the same file", err=True)
        raise typer.Exit(1)
    if not force:
        for path in targets:
            if path.exists():
                typer.echo(f"error: {path} exists; use --force to overwrite it", err=True)
                raise typer.Exit(1)
    key = generate_key(kind.value)
    try:
        write_new_file(out, private_key_to_pem(key), mode=0o600, force=force)
        if public_out is not None:
            write_new_file(public_out, public_key_to_pem(key.public_key()), mode=0o644, force=force)
    except OSError as exc:
        typer.echo(f"error: cannot write key: {exc.strerror} ({exc.filename})", err=True)
        raise typer.Exit(1) from None
    fingerprint = Hash.compute(HashType.SHA256, spki_der(key.public_key())).value.hex()
    typer.echo(f"{kind.value} private key written to {out}")
    if public_out is not None:
        typer.echo(f"public key written to {public_out}")
    typer.echo(f"public key SHA-256: {fingerprint}")


@app.command("public")
def public(
    key: Annotated[Path, typer.Argument(help="Private key, public key or certificate (PEM or DER).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the public key (PEM) here instead of printing it.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Print (or write) the public key of a key or certificate file, e.g. the owner key a
    manufacturer extends vouchers to: ``fdo keys public owner-ec256.key --out owner-ec256.pub``."""
    from fdo_cli.common import die, read_public_key

    pem = public_key_to_pem(read_public_key(key))
    if out is None:
        typer.echo(pem.decode(), nl=False)
        return
    if out.exists() and not force:
        raise die(f"{out} exists; use --force to overwrite it")
    try:
        write_new_file(out, pem, mode=0o644, force=force)
    except OSError as exc:
        raise die(f"cannot write {out}: {exc.strerror}") from None
    fingerprint = Hash.compute(HashType.SHA256, spki_der(read_public_key(out))).value.hex()
    typer.echo(f"public key written to {out}")
    typer.echo(f"public key SHA-256: {fingerprint}")
