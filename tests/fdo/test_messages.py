"""Every FDO 1.1 message class: round trips, lenient forms, strict failures, fuzzing.

Round trips use real keys (P-256 device, P-384 manufacturer/owner, RSA-2048 Owner2Key)
and check that decoding the encoding gives the same message and the same bytes.
Hypothesis checks that, for every registered type, arbitrary bytes raise only
:class:`~fdo.errors.FdoError` subclasses, and that generated messages round-trip.
"""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdo import codec
from fdo.codec import CborValue, Raw, Tag
from fdo.cose import EUPH_NONCE, CoseSign1, EatPayload, make_eat
from fdo.crypto import PkType, PrivateKeyT, PublicKey, generate_key
from fdo.di.messages import DIAppStart, DIDone, DISetCredentials, DISetHMAC, MfgInfo
from fdo.errors import FdoError, FdoUsageError, MessageBodyError, SignatureError, UnsupportedError
from fdo.messages import ErrorMessage, MessageBase, decode_message, message_classes
from fdo.rvinfo import (
    RendezvousDirective,
    RendezvousInfo,
    RVTO2Addr,
    RVTO2AddrEntry,
    TransportProtocol,
)
from fdo.serviceinfo import ServiceInfoKV
from fdo.to0.messages import TO0AcceptOwner, To0d, TO0Hello, TO0HelloAck, TO0OwnerSign, To1dPayload
from fdo.to1.messages import TO1HelloRV, TO1HelloRVAck, TO1ProveToRV, TO1RVRedirect
from fdo.to2.messages import (
    ProveOVHdrPayload,
    SetupDevicePayload,
    TO2DeviceServiceInfo,
    TO2DeviceServiceInfoReady,
    TO2Done,
    TO2Done2,
    TO2GetOVNextEntry,
    TO2HelloDevice,
    TO2OVNextEntry,
    TO2OwnerServiceInfo,
    TO2OwnerServiceInfoReady,
    TO2ProveDevice,
    TO2ProveOVHdr,
    TO2SetupDevice,
)
from fdo.types import Guid, Hash, HashType, MsgType, Nonce, SgType, SigInfo

GUID = Guid(bytes.fromhex("43bc9e0f731a4e7f947c5d03b0c1e483"))
NONCE_A = Nonce(bytes(range(16)))
NONCE_B = Nonce(bytes(range(16, 32)))
HMAC_SECRET = b"\x5a" * 32
ES256 = SigInfo(SgType.ES256)


# --------------------------------------------------------------------------- fixtures


@cache
def device_key() -> PrivateKeyT:
    return generate_key("ec256")


@cache
def owner_key() -> PrivateKeyT:
    return generate_key("ec384")


@cache
def owner2_key() -> PrivateKeyT:
    return generate_key("rsa2048")


def public(key: PrivateKeyT) -> PublicKey:
    return PublicKey.from_key(key.public_key())


def rv_info() -> RendezvousInfo:
    return RendezvousInfo.of([RendezvousDirective.build(dns="rv.example.com", port=8080)])


@cache
def ov_header() -> bytes:
    return codec.encode(
        [
            101,
            GUID.to_cbor_obj(),
            rv_info().to_cbor_obj(),
            "fdo-bootc test device",
            public(owner_key()).to_cbor_obj(),
            Hash.compute(HashType.SHA384, b"device chain").to_cbor_obj(),
        ]
    )


def header_hmac() -> Hash:
    return Hash.hmac(HashType.HMAC_SHA384, HMAC_SECRET, ov_header())


@cache
def ov_entry() -> bytes:
    payload = [
        Hash.compute(HashType.SHA384, ov_header()).to_cbor_obj(),
        Hash.compute(HashType.SHA384, GUID.value + b"fdo-bootc test device").to_cbor_obj(),
        None,
        public(owner_key()).to_cbor_obj(),
    ]
    return CoseSign1.sign(owner_key(), codec.encode(payload)).encode()


@cache
def voucher() -> bytes:
    return codec.encode([101, ov_header(), header_hmac().to_cbor_obj(), [b"\x30\x00"], [Raw(ov_entry())]])


def to0d() -> To0d:
    return To0d(voucher=voucher(), wait_seconds=86400, nonce=NONCE_A)


@cache
def to1d() -> CoseSign1:
    addr = RVTO2Addr(
        (RVTO2AddrEntry(b"\xc0\xa8\x7a\x01", "owner.example.com", 8043, TransportProtocol.HTTP),)
    )
    payload = To1dPayload(rv_to2_addr=addr, to0d_hash=Hash.compute(HashType.SHA384, to0d().to_bytes()))
    return CoseSign1.sign(owner_key(), payload.to_bytes())


def mfg_info() -> MfgInfo:
    return MfgInfo(pk_type=10, pk_enc=1, serial="SN-0001", device_info="fdo-bootc", csr=b"\x30\x82\x01\x00")


def prove_ov_hdr_payload() -> ProveOVHdrPayload:
    return ProveOVHdrPayload(
        ov_header=ov_header(),
        num_ov_entries=1,
        hmac=header_hmac(),
        nonce=NONCE_A,
        eb_sig_info=ES256,
        xa_key_exchange=bytes(150),
        hello_device_hash=Hash.compute(HashType.SHA384, b"hello"),
        max_owner_message_size=65535,
    )


def setup_payload() -> SetupDevicePayload:
    return SetupDevicePayload(
        rv_info=rv_info(), guid=Guid(bytes(16)), nonce=NONCE_B, owner2_key=public(owner2_key())
    )


@cache
def samples() -> tuple[MessageBase, ...]:
    kvs = (ServiceInfoKV.of("devmod", "active", True), ServiceInfoKV.of("devmod", "os", "Linux"))
    return (
        ErrorMessage(
            code=101, prev_msg_type=61, message="nonce mismatch", timestamp=1_700_000_000, correlation_id=0
        ),
        ErrorMessage(code=500, prev_msg_type=60, message="", timestamp=None, correlation_id=None),
        DIAppStart(mfg_info=mfg_info().to_bytes()),
        DIAppStart(mfg_info=None),
        DISetCredentials(ov_header=ov_header()),
        DISetHMAC(hmac=header_hmac()),
        DIDone(),
        TO0Hello(),
        TO0HelloAck(nonce=NONCE_A),
        TO0OwnerSign(to0d=to0d().to_bytes(), to1d=to1d()),
        TO0AcceptOwner(wait_seconds=3600),
        TO1HelloRV(guid=GUID, ea_sig_info=ES256),
        TO1HelloRVAck(nonce=NONCE_A, eb_sig_info=ES256),
        TO1ProveToRV(token=make_eat(device_key(), EatPayload(nonce=NONCE_A, ueid=GUID.ueid))),
        TO1RVRedirect(to1d=to1d()),
        TO2HelloDevice(
            max_device_message_size=65535,
            guid=GUID,
            nonce=NONCE_A,
            kex_suite="ECDH256",
            cipher_suite=1,
            ea_sig_info=ES256,
        ),
        TO2ProveOVHdr.sign(
            owner_key(), prove_ov_hdr_payload(), nonce=NONCE_B, owner_pubkey=public(owner_key())
        ),
        TO2GetOVNextEntry(entry_num=0),
        TO2OVNextEntry(entry_num=0, entry=ov_entry()),
        TO2ProveDevice.sign(
            device_key(), nonce=NONCE_B, guid=GUID, xb_key_exchange=bytes(86), setup_nonce=NONCE_A
        ),
        TO2SetupDevice.sign(owner2_key(), setup_payload()),
        TO2DeviceServiceInfoReady(
            replacement_hmac=Hash.hmac(HashType.HMAC_SHA256, HMAC_SECRET, b"new header"),
            max_owner_service_info_size=1300,
        ),
        TO2DeviceServiceInfoReady(replacement_hmac=None, max_owner_service_info_size=None),
        TO2OwnerServiceInfoReady(max_device_service_info_size=1300),
        TO2OwnerServiceInfoReady(max_device_service_info_size=None),
        TO2DeviceServiceInfo(is_more=False, service_info=kvs),
        TO2OwnerServiceInfo(is_more=False, is_done=True, service_info=()),
        TO2Done(nonce=NONCE_B),
        TO2Done2(nonce=NONCE_A),
    )


def sample_id(msg: MessageBase) -> str:
    return type(msg).__name__


# --------------------------------------------------------------------------- registry


def test_registry_has_every_message_type() -> None:
    registry = message_classes()
    assert set(registry) == {int(t) for t in MsgType}
    for msg_type, cls in registry.items():
        assert cls.MSG_TYPE == msg_type


def test_samples_cover_every_class() -> None:
    assert {type(m) for m in samples()} == set(message_classes().values())


def test_unknown_message_type() -> None:
    with pytest.raises(MessageBodyError, match="unknown message type"):
        decode_message(99, b"\x80")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", samples(), ids=sample_id)
def test_round_trip(msg: MessageBase) -> None:
    data = msg.encode()
    decoded = type(msg).decode(data)
    assert decoded.encode() == data
    assert decode_message(msg.MSG_TYPE, data).encode() == data
    if not isinstance(msg, TO2ProveOVHdr):  # its unprotected PublicKey decodes as tuples, not lists
        assert decoded == msg
    assert type(msg).from_cbor_obj(codec.decode(data)).encode() == data


def test_messages_are_frozen_and_keyword_only() -> None:
    msg = TO2Done(nonce=NONCE_A)
    with pytest.raises(AttributeError):
        msg.nonce = NONCE_B  # type: ignore[misc]
    with pytest.raises(TypeError):
        TO2Done(NONCE_A)  # type: ignore[call-arg]


def test_error_message_from_error() -> None:
    err = ErrorMessage.from_error(SignatureError("bad"), 64, now=1_700_000_000)
    assert err.encode() == codec.encode([101, 64, "bad", 1_700_000_000, 0])
    assert str(err) == "error 101 after message 64: bad"


def test_to0d_keeps_voucher_bytes() -> None:
    data = to0d().to_bytes()
    parsed = To0d.from_bytes(data)
    assert parsed.voucher == voucher()
    assert parsed.to_bytes() == data
    msg = TO0OwnerSign.decode(TO0OwnerSign(to0d=data, to1d=to1d()).encode())
    assert msg.to0d == data and msg.to0d_data() == parsed
    assert msg.to1d_payload().to0d_hash.matches(data)


def test_to1d_payload_helpers() -> None:
    redirect = TO1RVRedirect.decode(TO1RVRedirect(to1d=to1d()).encode())
    redirect.to1d.verify(owner_key().public_key())
    assert redirect.to1d_payload().rv_to2_addr.entries[0].urls() == [
        "http://owner.example.com:8043",
        "http://192.168.122.1:8043",
    ]


def test_prove_to_rv_eat() -> None:
    eat = make_eat(device_key(), EatPayload(nonce=NONCE_A, ueid=GUID.ueid))
    msg = TO1ProveToRV.decode(TO1ProveToRV(token=eat).encode())
    claims = msg.eat()
    assert claims.nonce == NONCE_A and claims.guid() == GUID
    msg.token.verify(device_key().public_key())


def test_prove_ov_hdr_helpers() -> None:
    msg = TO2ProveOVHdr.decode(
        TO2ProveOVHdr.sign(
            owner_key(), prove_ov_hdr_payload(), nonce=NONCE_B, owner_pubkey=public(owner_key())
        ).encode()
    )
    assert msg.cuph_nonce == NONCE_B
    owner = msg.cuph_owner_pubkey
    assert owner.same_key(owner_key().public_key())
    msg.token.verify(owner.key, "TO2.ProveOVHdr")
    assert msg.payload() == prove_ov_hdr_payload()
    assert msg.payload().ov_header == ov_header()


def test_prove_ov_hdr_missing_headers() -> None:
    token = CoseSign1.sign(owner_key(), prove_ov_hdr_payload().to_bytes())
    msg = TO2ProveOVHdr.decode(TO2ProveOVHdr(token=token).encode())
    with pytest.raises(MessageBodyError, match="CUPHNonce"):
        _ = msg.cuph_nonce
    with pytest.raises(MessageBodyError, match="CUPHOwnerPubKey"):
        _ = msg.cuph_owner_pubkey


def test_prove_ov_hdr_bad_owner_key() -> None:
    token = CoseSign1.sign(
        owner_key(), prove_ov_hdr_payload().to_bytes(), unprotected={257: [10, 1, b"junk"]}
    )
    with pytest.raises(FdoError):
        _ = TO2ProveOVHdr(token=token).cuph_owner_pubkey


def test_prove_device_helpers() -> None:
    msg = TO2ProveDevice.decode(
        TO2ProveDevice.sign(
            device_key(), nonce=NONCE_B, guid=GUID, xb_key_exchange=b"xb", setup_nonce=NONCE_A
        ).encode()
    )
    assert msg.setup_nonce == NONCE_A
    assert msg.xb_key_exchange == b"xb"
    assert msg.eat().nonce == NONCE_B and msg.eat().guid() == GUID
    msg.token.verify(device_key().public_key())


def test_prove_device_bad_claims() -> None:
    eat = make_eat(device_key(), EatPayload(nonce=NONCE_B, ueid=GUID.ueid, fdo=[b"a", b"b"]))
    msg = TO2ProveDevice(token=eat)
    with pytest.raises(MessageBodyError, match="EUPHNonce"):
        _ = msg.setup_nonce
    with pytest.raises(MessageBodyError, match="EAT-FDO"):
        _ = msg.xb_key_exchange
    eat = make_eat(
        device_key(), EatPayload(nonce=NONCE_B, ueid=GUID.ueid), unprotected={EUPH_NONCE: b"short"}
    )
    with pytest.raises(MessageBodyError):
        _ = TO2ProveDevice(token=eat).setup_nonce
    with pytest.raises(MessageBodyError):
        _ = TO2ProveDevice(token=eat).xb_key_exchange


def test_setup_device_payload_raw_fields() -> None:
    payload = setup_payload()
    assert payload.rv_info_raw == codec.encode(rv_info().to_cbor_obj())
    assert payload.owner2_key_raw == public(owner2_key()).encode()
    msg = TO2SetupDevice.decode(
        TO2SetupDevice.sign(owner2_key(), payload, pk_type=PkType.RSA2048RESTR).encode()
    )
    parsed = msg.payload()
    assert parsed == payload
    msg.token.verify(parsed.owner2_key.key)


def test_setup_device_payload_keeps_received_bytes() -> None:
    # Non-deterministic encodings the owner might send: a one-byte array length for the
    # RVInfo (0x98 0x01), a non-minimal port inside an RVValue, and a 4-byte bstr length
    # in Owner2Key's X509 body. The device must HMAC exactly these bytes.
    rv_raw = b"\x98\x01" + codec.encode([[3, b"\x19\x00\x50"], [14, b"\xf6"]])
    spki = public(owner2_key()).body
    key_raw = b"\x83\x01\x01\x5a" + len(spki).to_bytes(4, "big") + spki
    data = b"\x84" + rv_raw + codec.encode(GUID.value) + codec.encode(NONCE_B.value) + key_raw
    payload = SetupDevicePayload.from_bytes(data)
    assert payload.rv_info_raw == rv_raw and payload.owner2_key_raw == key_raw
    assert payload.rv_info.directives[0].dev_port == 80
    assert payload.rv_info.directives[0].bypass
    assert payload.owner2_key.same_key(owner2_key().public_key())
    assert payload.to_bytes() == data
    assert codec.encode(payload.rv_info.to_cbor_obj()) != rv_raw  # a re-encoding would differ


def test_ov_next_entry_keeps_entry_bytes() -> None:
    # A non-deterministic entry (unprotected map keys out of order) must survive verbatim.
    token = CoseSign1.decode(ov_entry())
    body = [token.protected, {}, token.payload, token.signature]
    entry = b"\xd2\x84" + codec.encode(body[0]) + b"\xa2\x19\x01\x01\x01\x19\x01\x00\x02"
    entry += codec.encode(body[2]) + codec.encode(body[3])
    data = codec.encode([7, Raw(entry)])
    msg = TO2OVNextEntry.decode(data)
    assert msg.entry == entry and msg.entry_num == 7
    assert msg.encode() == data
    assert msg.entry_token().payload == token.payload


# --------------------------------------------------------------------------- lenient forms


def test_set_credentials_rs_bare_header() -> None:
    msg = DISetCredentials.decode(ov_header())
    assert msg.ov_header == ov_header()
    assert msg.encode() == codec.encode([ov_header()])  # always written in the 1.1 form
    assert DISetCredentials.from_cbor_obj(codec.decode(ov_header())).ov_header == ov_header()


def test_set_credentials_wrapped_bare_header() -> None:
    msg = DISetCredentials.decode(b"\x81" + ov_header())
    assert msg.ov_header == ov_header()


def test_app_start_null_mfg_info() -> None:
    msg = DIAppStart.decode(b"\x81\xf6")
    assert msg.mfg_info is None
    assert msg.encode() == b"\x81\xf6"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            [10, 1, "SN-0001", "fdo-bootc", b"\x30\x00"],
            MfgInfo(pk_type=10, pk_enc=1, serial="SN-0001", device_info="fdo-bootc", csr=b"\x30\x00"),
        ),
        (  # java: trailing onDieChain / testSig / maroePrefix are ignored
            [5, 1, "SN-2", "model", b"\x30\x00", None, b"sig", b"maroe"],
            MfgInfo(pk_type=5, pk_enc=1, serial="SN-2", device_info="model", csr=b"\x30\x00"),
        ),
        ("00:11:22:33:44:55", MfgInfo(serial="00:11:22:33:44:55")),  # rs: a single tstr
        ([None, None, "SN-3", None, None], MfgInfo(serial="SN-3", device_info=None)),
    ],
)
def test_mfg_info_forms(obj: CborValue, expected: MfgInfo) -> None:
    assert MfgInfo.from_bytes(codec.encode(obj)) == expected


def test_mfg_info_writes() -> None:
    assert MfgInfo(serial="SN").to_bytes() == codec.encode("SN")
    assert mfg_info().to_bytes() == codec.encode([10, 1, "SN-0001", "fdo-bootc", b"\x30\x82\x01\x00"])
    with pytest.raises(FdoUsageError):
        MfgInfo().to_bytes()


@pytest.mark.parametrize("bad", [[10, 1, "SN"], [10, 1, 5, "m", b""], [10, "1", "SN", "m", b""], 42])
def test_mfg_info_bad(bad: CborValue) -> None:
    with pytest.raises(MessageBodyError):
        MfgInfo.from_bytes(codec.encode(bad))


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (None, None),
        (1_600_000_000, 1_600_000_000),
        (Tag(1, 1_600_000_000), 1_600_000_000),
        (Tag(0, "2020-09-13T12:26:40Z"), 1_600_000_000),
    ],
)
def test_error_message_timestamps(timestamp: CborValue, expected: int | None) -> None:
    msg = ErrorMessage.decode(codec.encode([100, 60, "bad body", timestamp, 1]))
    assert msg.timestamp == expected


def test_error_message_rs_u128_correlation_id() -> None:
    # fido-device-onboard-rs' own test vector (data-formats/src/messages/v11/error.rs).
    data = bytes.fromhex(
        "850216782a4f776e65727368697020766f7563686572206d616e756661637475726572206e6f74"
        "2074727573746564f61be34d1bbfbd9d5c17"
    )
    msg = ErrorMessage.decode(data)
    assert (msg.code, msg.prev_msg_type, msg.timestamp) == (2, 22, None)
    assert msg.correlation_id == 16378777930150272023
    assert msg.encode() == data
    big = ErrorMessage(code=500, prev_msg_type=70, message="x", timestamp=None, correlation_id=(1 << 127) + 1)
    encoded = big.encode()
    assert encoded.endswith(b"\xc2\x50\x80" + bytes(14) + b"\x01")  # a bignum, tag 2
    assert ErrorMessage.decode(encoded) == big


def test_error_message_rs_map_form() -> None:
    data = codec.encode(
        {
            "error_code": 101,
            "previous_message_type": 64,
            "error_string": "signature",
            "error_timestamp": None,
            "error_uuid": 12345,
        }
    )
    assert ErrorMessage.decode(data) == ErrorMessage(
        code=101, prev_msg_type=64, message="signature", timestamp=None, correlation_id=12345
    )
    with pytest.raises(MessageBodyError, match="error_string"):
        ErrorMessage.decode(codec.encode({"error_code": 1, "previous_message_id": 2}))


@pytest.mark.parametrize("cls", [TO1ProveToRV, TO1RVRedirect, TO2ProveOVHdr, TO2ProveDevice, TO2SetupDevice])
def test_untagged_cose_sign1_is_read(cls: type[MessageBase]) -> None:
    token = CoseSign1.sign(device_key(), b"\xa0", unprotected={1: b"x"})
    untagged = codec.encode(token.to_cbor_obj().value)
    msg = cls.decode(untagged)
    assert msg.encode() == untagged  # re-emitted as received (untagged)
    assert cls.decode(token.encode()).encode() == token.encode()


def test_hello_device_advisory_sizes() -> None:
    for size in (0, 17, 65535):
        obj = [size, GUID.value, NONCE_A.value, "ECDH384", 3, [-35, b""]]
        assert TO2HelloDevice.decode(codec.encode(obj)).max_device_message_size == size
    obj = [65535, GUID.value, NONCE_A.value, "ASYMKEX2048", -17760704, [-257, b""]]
    assert TO2HelloDevice.decode(codec.encode(obj)).cipher_suite == -17760704


# --------------------------------------------------------------------------- strict failures

HELLO = [65535, GUID.value, NONCE_A.value, "ECDH256", 1, [-7, b""]]
READY_HMAC = [5, bytes(32)]

BAD: list[tuple[type[MessageBase], CborValue]] = [
    (ErrorMessage, [1, 2, "x", None]),
    (ErrorMessage, [1, 2, b"x", None, None]),
    (ErrorMessage, [70000, 2, "x", None, None]),
    (ErrorMessage, [1, 256, "x", None, None]),
    (ErrorMessage, [1, 2, "x", "yesterday", None]),
    (ErrorMessage, [1, 2, "x", None, -1]),
    (ErrorMessage, [1, 2, "x", None, Tag(2, b"\x01" + bytes(16))]),  # 2**128
    (ErrorMessage, "error"),
    (DIAppStart, []),
    (DIAppStart, ["text"]),
    (DIAppStart, [b"\x82\x01"]),  # truncated inner CBOR
    (DIAppStart, [b"\x01\x02"]),  # trailing bytes in the inner CBOR
    (DISetCredentials, []),
    (DISetCredentials, ["header"]),
    (DISetCredentials, [[101, 2, 3]]),
    (DISetCredentials, [1, 2, 3]),
    (DISetHMAC, []),
    (DISetHMAC, [[5, bytes(31)]]),
    (DISetHMAC, [READY_HMAC, READY_HMAC]),
    (DIDone, [0]),
    (DIDone, {}),
    (TO0Hello, [None]),
    (TO0HelloAck, [bytes(15)]),
    (TO0HelloAck, []),
    (TO0OwnerSign, [b"to0d"]),
    (TO0OwnerSign, ["to0d", Tag(18, [b"\xa1\x01\x26", {}, b"", b""])]),
    (TO0OwnerSign, [b"to0d", Tag(17, [b"\xa1\x01\x26", {}, b"", b""])]),
    (TO0AcceptOwner, [-1]),
    (TO0AcceptOwner, [1 << 32]),
    (TO0AcceptOwner, [True]),
    (TO1HelloRV, [bytes(17), [-7, b""]]),
    (TO1HelloRV, [GUID.value, [-7]]),
    (TO1HelloRV, [GUID.value, [12345, b""]]),
    (TO1HelloRVAck, [NONCE_A.value]),
    (TO1ProveToRV, [b"\xa1\x01\x26", {}, b""]),
    (TO1ProveToRV, Tag(18, [b"", {}, b"", b""])),  # no alg
    (TO1RVRedirect, Tag(18, [b"\xa1\x01\x26", [], b"", b""])),
    (TO1RVRedirect, Tag(18, [b"\xa1\x01\x26", {1: Tag(30, [1, 3])}, b"", b""])),  # a Fraction
    (TO2OVNextEntry, [0, Tag(18, [b"\xa1\x01\x26", {1: Tag(37, bytes(16))}, b"", b""])]),  # a UUID
    (TO2HelloDevice, HELLO[:5]),
    (TO2HelloDevice, [65536, *HELLO[1:]]),
    (TO2HelloDevice, [*HELLO[:3], b"ECDH256", *HELLO[4:]]),
    (TO2HelloDevice, [*HELLO[:4], "1", HELLO[5]]),
    (TO2HelloDevice, [HELLO[0], bytes(17), *HELLO[2:]]),
    (TO2ProveOVHdr, [1, 2, 3, 4]),
    (TO2GetOVNextEntry, [256]),
    (TO2GetOVNextEntry, [-1]),
    (TO2GetOVNextEntry, [0, 1]),
    (TO2OVNextEntry, [0]),
    (TO2OVNextEntry, [0, b"entry"]),
    (TO2OVNextEntry, [256, Tag(18, [b"\xa1\x01\x26", {}, b"", b""])]),
    (TO2ProveDevice, [b"\xa1\x01\x26", {}, b"", b"", b""]),
    (TO2SetupDevice, None),
    (TO2DeviceServiceInfoReady, [None]),
    (TO2DeviceServiceInfoReady, [READY_HMAC, 1 << 16]),
    (TO2DeviceServiceInfoReady, [[5, bytes(10)], None]),
    (TO2OwnerServiceInfoReady, ["1300"]),
    (TO2OwnerServiceInfoReady, []),
    (TO2DeviceServiceInfo, [False]),
    (TO2DeviceServiceInfo, [0, []]),
    (TO2DeviceServiceInfo, [False, [["devmod:os", "Linux"]]]),
    (TO2DeviceServiceInfo, [False, {"devmod:os": b"Linux"}]),
    (TO2OwnerServiceInfo, [False, []]),
    (TO2OwnerServiceInfo, [False, None, []]),
    (TO2Done, [bytes(17)]),
    (TO2Done, [NONCE_A.value, NONCE_B.value]),
    (TO2Done2, ["nonce"]),
]


@pytest.mark.parametrize(("cls", "obj"), BAD, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(BAD)])
def test_bad_body(cls: type[MessageBase], obj: CborValue) -> None:
    with pytest.raises(FdoError) as info:
        cls.decode(codec.encode(obj))
    assert isinstance(info.value, MessageBodyError | UnsupportedError)


@pytest.mark.parametrize("msg", samples(), ids=sample_id)
def test_trailing_and_truncated_bytes(msg: MessageBase) -> None:
    data = msg.encode()
    with pytest.raises(MessageBodyError):
        type(msg).decode(data + b"\x00")
    with pytest.raises(MessageBodyError):
        type(msg).decode(data[:-1])
    with pytest.raises(MessageBodyError):
        type(msg).decode(b"")


def test_to0d_bad() -> None:
    with pytest.raises(MessageBodyError):
        To0d.from_bytes(codec.encode([[], 1 << 32, NONCE_A.value]))
    with pytest.raises(MessageBodyError):
        To0d.from_bytes(codec.encode(["voucher", 1, NONCE_A.value]))
    with pytest.raises(MessageBodyError):
        To1dPayload.from_bytes(codec.encode([[], [-16, bytes(32)]]))  # RVTO2Addr needs an entry


def test_payload_bad() -> None:
    obj = prove_ov_hdr_payload().to_cbor_obj()
    with pytest.raises(MessageBodyError):
        ProveOVHdrPayload.from_bytes(codec.encode([*obj[:1], 256, *obj[2:]]))
    with pytest.raises(MessageBodyError):
        ProveOVHdrPayload.from_bytes(codec.encode(obj[:7]))
    with pytest.raises(FdoError):
        SetupDevicePayload.from_bytes(codec.encode([[], GUID.value, NONCE_A.value, [10, 1, b"not a key"]]))
    with pytest.raises(MessageBodyError):
        SetupDevicePayload.from_bytes(codec.encode([[], GUID.value, NONCE_A.value]))


# --------------------------------------------------------------------------- Hypothesis

MESSAGE_TYPES = sorted(message_classes())

cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
)


def _cbor(tags: list[int]) -> st.SearchStrategy[CborValue]:
    return st.recursive(
        cbor_leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=8),
            st.dictionaries(st.integers(-300, 300) | st.text(max_size=6), children, max_size=4),
            st.builds(Tag, st.sampled_from(tags), children),
        ),
        max_leaves=30,
    )


#: Any CBOR, including tags cbor2 interprets (0, 1, 2, 24, ...) with values it refuses.
cbor_objects = _cbor([0, 1, 2, 3, 16, 17, 18, 24, 30, 258, 55799])
#: CBOR that decodes (only tags cbor2 leaves alone), for round trips.
plain_cbor = _cbor([16, 17, 18, 1000])


def _decode_only_fdo_errors(msg_type: int, data: bytes) -> None:
    try:
        decode_message(msg_type, data)
    except FdoError:
        pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGE_TYPES), st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_fdo_errors(msg_type: int, data: bytes) -> None:
    _decode_only_fdo_errors(msg_type, data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGE_TYPES), cbor_objects)
def test_arbitrary_cbor_raises_only_fdo_errors(msg_type: int, obj: CborValue) -> None:
    _decode_only_fdo_errors(msg_type, codec.encode(obj))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_messages_raise_only_fdo_errors(data: st.DataObject) -> None:
    msg = data.draw(st.sampled_from(samples()))
    body = bytearray(msg.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    _decode_only_fdo_errors(msg.MSG_TYPE, bytes(body))


nonces = st.binary(min_size=16, max_size=16).map(Nonce)
guids = st.binary(min_size=16, max_size=16).map(Guid)
hashes = st.sampled_from(list(HashType)).flatmap(
    lambda alg: st.binary(min_size=alg.digest_size, max_size=alg.digest_size).map(lambda v: Hash(alg, v))
)
sig_infos = st.builds(SigInfo, st.sampled_from(list(SgType)), st.binary(max_size=8))
u8 = st.integers(0, 255)
u16 = st.integers(0, 65535)
cose_tokens = st.builds(
    CoseSign1,
    protected=st.sampled_from([b"\xa1\x01\x26", b"\xa1\x01\x38\x22", b"\xa1\x01\x39\x01\x00"]),
    unprotected=st.dictionaries(st.integers(-300, 300), st.binary(max_size=16) | u16, max_size=3),
    payload=st.binary(max_size=64),
    signature=st.binary(max_size=96),
    tagged=st.booleans(),
)
kvs = st.lists(
    st.builds(
        ServiceInfoKV,
        st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)).map(lambda t: f"{t[0]}:{t[1]}"),
        st.binary(max_size=32),
    ),
    max_size=4,
).map(tuple)
headers = st.tuples(
    st.integers(0, 65535), cbor_objects, cbor_objects, cbor_objects, cbor_objects, cbor_objects
)

MESSAGE_STRATEGIES: dict[type[MessageBase], st.SearchStrategy[MessageBase]] = {
    ErrorMessage: st.builds(
        ErrorMessage,
        code=u16,
        prev_msg_type=u8,
        message=st.text(max_size=40),
        timestamp=st.none() | st.integers(-(1 << 63), (1 << 64) - 1),
        correlation_id=st.none() | st.integers(0, (1 << 128) - 1),
    ),
    DIAppStart: st.builds(DIAppStart, mfg_info=st.none() | plain_cbor.map(codec.encode)),
    DISetCredentials: st.builds(DISetCredentials, ov_header=headers.map(lambda h: codec.encode(list(h)))),
    DISetHMAC: st.builds(DISetHMAC, hmac=hashes),
    DIDone: st.just(DIDone()),
    TO0Hello: st.just(TO0Hello()),
    TO0HelloAck: st.builds(TO0HelloAck, nonce=nonces),
    TO0OwnerSign: st.builds(TO0OwnerSign, to0d=st.binary(max_size=64), to1d=cose_tokens),
    TO0AcceptOwner: st.builds(TO0AcceptOwner, wait_seconds=st.integers(0, (1 << 32) - 1)),
    TO1HelloRV: st.builds(TO1HelloRV, guid=guids, ea_sig_info=sig_infos),
    TO1HelloRVAck: st.builds(TO1HelloRVAck, nonce=nonces, eb_sig_info=sig_infos),
    TO1ProveToRV: st.builds(TO1ProveToRV, token=cose_tokens),
    TO1RVRedirect: st.builds(TO1RVRedirect, to1d=cose_tokens),
    TO2HelloDevice: st.builds(
        TO2HelloDevice,
        max_device_message_size=u16,
        guid=guids,
        nonce=nonces,
        kex_suite=st.sampled_from(["ECDH256", "ECDH384", "DHKEXid14", "DHKEXid15", "ASYMKEX2048"]),
        cipher_suite=st.sampled_from([1, 2, 3, 32, 33, -17760703, -17760706]),
        ea_sig_info=sig_infos,
    ),
    TO2ProveOVHdr: st.builds(TO2ProveOVHdr, token=cose_tokens),
    TO2GetOVNextEntry: st.builds(TO2GetOVNextEntry, entry_num=u8),
    TO2OVNextEntry: st.builds(TO2OVNextEntry, entry_num=u8, entry=cose_tokens.map(CoseSign1.encode)),
    TO2ProveDevice: st.builds(TO2ProveDevice, token=cose_tokens),
    TO2SetupDevice: st.builds(TO2SetupDevice, token=cose_tokens),
    TO2DeviceServiceInfoReady: st.builds(
        TO2DeviceServiceInfoReady,
        replacement_hmac=st.none() | hashes,
        max_owner_service_info_size=st.none() | u16,
    ),
    TO2OwnerServiceInfoReady: st.builds(
        TO2OwnerServiceInfoReady, max_device_service_info_size=st.none() | u16
    ),
    TO2DeviceServiceInfo: st.builds(TO2DeviceServiceInfo, is_more=st.booleans(), service_info=kvs),
    TO2OwnerServiceInfo: st.builds(
        TO2OwnerServiceInfo, is_more=st.booleans(), is_done=st.booleans(), service_info=kvs
    ),
    TO2Done: st.builds(TO2Done, nonce=nonces),
    TO2Done2: st.builds(TO2Done2, nonce=nonces),
}


def test_strategies_cover_every_class() -> None:
    assert set(MESSAGE_STRATEGIES) == set(message_classes().values())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(*MESSAGE_STRATEGIES.values()))
def test_generated_messages_round_trip(msg: MessageBase) -> None:
    data = msg.encode()
    decoded = decode_message(msg.MSG_TYPE, data)
    assert decoded == msg
    assert decoded.encode() == data


@settings(max_examples=100)
@given(
    st.builds(
        ProveOVHdrPayload,
        ov_header=headers.map(lambda h: codec.encode(list(h))),
        num_ov_entries=u8,
        hmac=hashes,
        nonce=nonces,
        eb_sig_info=sig_infos,
        xa_key_exchange=st.binary(max_size=200),
        hello_device_hash=hashes,
        max_owner_message_size=u16,
    )
)
def test_generated_prove_ov_hdr_payload_round_trip(payload: ProveOVHdrPayload) -> None:
    data = payload.to_bytes()
    assert ProveOVHdrPayload.from_bytes(data) == payload
    assert ProveOVHdrPayload.from_bytes(data).to_bytes() == data


@settings(max_examples=100)
@given(
    st.builds(
        To0d, voucher=st.lists(plain_cbor, max_size=5).map(codec.encode), wait_seconds=u16, nonce=nonces
    )
)
def test_generated_to0d_round_trip(to0d_value: To0d) -> None:
    data = to0d_value.to_bytes()
    assert To0d.from_bytes(data) == to0d_value
