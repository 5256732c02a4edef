"""``fdo voucher``: show and verify ownership vouchers (PEM files with one or more blocks, or raw CBOR)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from fdo.crypto import PublicKey, key_kind, spki_der
from fdo.errors import FdoError, InvalidVoucherError
from fdo.rvinfo import RendezvousDirective, RendezvousInstr, RVProtocol, RVVariable
from fdo.types import Hash, HashType
from fdo.voucher import OwnershipVoucher, split_pem
from fdo_cli.common import die, read_bytes, read_certificates, read_public_key
from fdo_cli.output import Format, JsonOpt, OutputOpt, chosen, emit_data

app = typer.Typer(no_args_is_help=True, help="Inspect and verify ownership vouchers.")

FileArg = Annotated[Path, typer.Argument(help="Voucher file: PEM (several blocks allowed) or raw CBOR.")]


# --------------------------------------------------------------------------- description


def describe_key(key: PublicKey) -> dict[str, str]:
    return {
        "type": key.pk_type.name,
        "encoding": key.pk_enc.name,
        "kind": key_kind(key.key),
        "sha256": Hash.compute(HashType.SHA256, spki_der(key.key)).value.hex(),
    }


def _key_text(key: PublicKey) -> str:
    info = describe_key(key)
    return f"{info['type']}/{info['encoding']} {info['kind']} sha256:{info['sha256']}"


def describe_instr(instr: RendezvousInstr) -> tuple[str, Any]:
    """``(name, readable value)`` of one rendezvous instruction."""
    try:
        var: RVVariable | None = RVVariable(instr.variable)
        name = RVVariable(instr.variable).name.lower()
    except ValueError:
        var, name = None, f"var{instr.variable}"
    if instr.value is None:
        return name, None
    try:
        value = instr.decoded()
        if var == RVVariable.IP_ADDRESS:
            return name, RendezvousDirective((instr,)).ip
        if var == RVVariable.PROTOCOL:
            return name, RVProtocol(value).name.lower()
        if var in (RVVariable.SV_CERT_HASH, RVVariable.CL_CERT_HASH):
            return name, str(Hash.from_cbor_obj(value, name))
        if var == RVVariable.WIFI_PW:
            return name, "***"
        if isinstance(value, int | str | bool) or value is None:
            return name, value
    except (FdoError, ValueError):
        pass
    return name, instr.value.hex()


def _directive_text(directive: RendezvousDirective) -> str:
    parts = []
    for instr in directive.instructions:
        name, value = describe_instr(instr)
        parts.append(name if value is None else f"{name}={value}")
    return " ".join(parts)


def describe(voucher: OwnershipVoucher) -> dict[str, Any]:
    """A JSON-friendly description of ``voucher``."""
    header = voucher.header
    chain: list[dict[str, str]] = []
    try:
        certs = voucher.device_certificates
    except FdoError as exc:
        certs = []
        chain.append({"error": exc.message})
    # cryptography warns about over-long name attributes (the FIDO test PKI has some).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for cert in certs:
            chain.append(
                {
                    "subject": cert.subject.rfc4514_string(),
                    "issuer": cert.issuer.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                }
            )
    entries = []
    for entry in voucher.entries:
        payload = entry.payload
        entries.append(
            {
                "sig_alg": entry.sign1.alg.name,
                "hash_alg": payload.prev_hash.alg.name,
                "public_key": describe_key(payload.public_key),
                "extra": None if payload.extra is None else payload.extra.hex(),
            }
        )
    return {
        "guid": str(header.guid),
        "prot_ver": voucher.prot_ver,
        "header_prot_ver": header.prot_ver,
        "device_info": header.device_info,
        "rendezvous": [
            [dict([describe_instr(i)]) for i in directive.instructions]
            for directive in header.rv_info.directives
        ],
        "manufacturer_key": describe_key(header.public_key),
        "header_hmac_alg": voucher.hmac.alg.name,
        "cert_chain_hash": None if header.cert_chain_hash is None else str(header.cert_chain_hash),
        "cert_chain": None if voucher.cert_chain is None else chain,
        "entries": entries,
        "owner_key": describe_key(voucher.owner_public_key),
    }


def _print_text(index: int, voucher: OwnershipVoucher) -> None:
    info = describe(voucher)
    echo = typer.echo
    echo(f"Voucher {index}")
    echo(f"  GUID:              {info['guid']}")
    echo(f"  Protocol version:  {info['prot_ver']} (header {info['header_prot_ver']})")
    echo(f"  Device info:       {info['device_info']}")
    echo("  Rendezvous:")
    for n, directive in enumerate(voucher.header.rv_info.directives):
        echo(f"    [{n}] {_directive_text(directive)}")
    echo(f"  Manufacturer key:  {_key_text(voucher.header.public_key)}")
    echo(f"  Header HMAC:       {info['header_hmac_alg']}")
    echo(f"  Cert chain hash:   {info['cert_chain_hash'] or 'none'}")
    if info["cert_chain"] is None:
        echo("  Device cert chain: none")
    else:
        echo("  Device cert chain:")
        for n, cert in enumerate(info["cert_chain"]):
            if "error" in cert:
                echo(f"    [{n}] unreadable: {cert['error']}")
            else:
                echo(f"    [{n}] {cert['subject']} (issuer {cert['issuer']}, until {cert['not_after']})")
    echo(f"  Entries:           {len(voucher.entries)}")
    for n, entry in enumerate(voucher.entries):
        extra = "none" if entry.payload.extra is None else f"{len(entry.payload.extra)} bytes"
        echo(
            f"    [{n}] signed {entry.sign1.alg.name}, hashes {entry.payload.prev_hash.alg.name}, "
            f"next owner {_key_text(entry.payload.public_key)}, extra {extra}"
        )
    echo(f"  Owner key:         {_key_text(voucher.owner_public_key)}")


def _decode_blocks(path: Path) -> list[bytes]:
    try:
        return split_pem(read_bytes(path))
    except FdoError as exc:
        raise die(f"{path}: {exc.message}") from None


# --------------------------------------------------------------------------- commands


@app.command()
def show(file: FileArg, output: OutputOpt = None, as_json: JsonOpt = False) -> None:
    """Show each voucher in FILE: GUID, device info, rendezvous, keys, chain and entries."""
    fmt = chosen(output, as_json)
    out: list[dict[str, Any]] = []
    failed = False
    for index, block in enumerate(_decode_blocks(file), 1):
        try:
            voucher = OwnershipVoucher.decode(block)
        except FdoError as exc:
            failed = True
            if fmt is not Format.TABLE:
                out.append({"index": index, "error": exc.message})
            else:
                typer.echo(f"Voucher {index}: cannot read: {exc.message}", err=True)
            continue
        if fmt is not Format.TABLE:
            out.append({"index": index, **describe(voucher)})
        else:
            _print_text(index, voucher)
    if fmt is not Format.TABLE:
        emit_data(out, fmt)
    if failed:
        raise typer.Exit(1)


@app.command()
def verify(
    file: FileArg,
    owner_key: Annotated[
        Path | None,
        typer.Option("--owner-key", help="Expected final owner key (PEM public/private key or certificate)."),
    ] = None,
    hmac_secret: Annotated[
        str | None, typer.Option("--hmac-secret", help="Device HMAC secret (hex) to check the header HMAC.")
    ] = None,
    device_ca: Annotated[
        Path | None, typer.Option("--device-ca", help="PEM file of trusted device CA certificates.")
    ] = None,
    min_entries: Annotated[int, typer.Option("--min-entries", min=0, help="Required number of entries.")] = 0,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse the legacy CBOR-framed cert-chain hash of old rs and SHA-1 device certificates.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Verify each voucher in FILE; exit 0 when all are valid, 1 naming the failing check otherwise."""
    secret: bytes | None = None
    if hmac_secret is not None:
        try:
            secret = bytes.fromhex(hmac_secret)
        except ValueError:
            raise typer.BadParameter("not hexadecimal", param_hint="--hmac-secret") from None
    expected_owner = read_public_key(owner_key) if owner_key is not None else None
    cas = read_certificates(device_ca) if device_ca is not None else []

    results: list[dict[str, Any]] = []
    for index, block in enumerate(_decode_blocks(file), 1):
        result: dict[str, Any] = {"index": index, "valid": False}
        try:
            voucher = OwnershipVoucher.decode(block)
            result["guid"] = str(voucher.guid)
            result["entries"] = len(voucher.entries)
            report = voucher.verify(
                hmac_secret=secret,
                owner_key=expected_owner,
                min_entries=min_entries,
                allow_legacy_chain_hash=not strict,
                allow_sha1_certificates=not strict,
                trusted_device_cas=cas,
            )
        except InvalidVoucherError as exc:
            result.update(check=exc.check, error=exc.message)
        except FdoError as exc:
            result.update(check="decode", error=exc.message)
        else:
            result.update(
                valid=True,
                checks=report.checks,
                legacy_chain_hash=report.legacy_chain_hash,
                notes=report.notes,
            )
        results.append(result)

    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            label = f"voucher {r['index']}" + (f" ({r['guid']})" if "guid" in r else "")
            if r["valid"]:
                typer.echo(f"{label}: valid, {r['entries']} entries")
                for note in r["notes"]:
                    typer.echo(f"  note: {note}")
            else:
                typer.echo(f"{label}: INVALID, check {r['check']} failed: {r['error']}")
    if not all(r["valid"] for r in results):
        raise typer.Exit(1)


__all__ = ["app", "describe", "describe_instr", "describe_key"]
