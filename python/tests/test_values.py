"""Typed values interoperate with the Rust typed API (``rmp_serde::to_vec_named``),
and the pure helpers (headers, cookie) match the Rust client's output.

``RUST_PROFILE_HEX`` and ``PYTHON_PROFILE_HEX`` are the same constants as in
``client/src/proto/value.rs``'s unit tests: Rust pins what it writes and reads
what Python writes; this file reads what Rust writes and pins what Python
writes. Through a daemon, the bytes are stored and returned unchanged.
"""

from __future__ import annotations

import shoal
from shoal.ratelimit import Decision
from conftest import Daemon

# What the Rust typed API writes for `profile()` in client/src/proto/value.rs.
RUST_PROFILE_HEX = (
    "8ba46e616d65a5616c696365a36167651fa561646d696ec2a573636f7265cb3ff8000000000000a47461677392a161a162a46e69636b"
    "c0a6617661746172c4030001ffa5707265667382a46461726b01a46c616e67fea3706f7392ff02a4726f6c65a541646d696ea56f7468"
    "657281a64d656d62657281a573696e6365cd07e4"
)
PYTHON_PROFILE_HEX = (
    "8aa4726f6c65a541646d696ea56f7468657281a64d656d62657281a573696e6365cd07e4a3706f7392ff02a5707265667382a46c616e"
    "67fea46461726b01a6617661746172c4030001ffa47461677392a161a162a573636f726502a561646d696ec2a36167651fa46e616d65"
    "a5616c696365"
)

PROFILE = {
    "name": "alice",
    "age": 31,
    "admin": False,
    "score": 1.5,
    "tags": ["a", "b"],
    "nick": None,
    "avatar": b"\x00\x01\xff",  # serde_bytes on the Rust side
    "prefs": {"dark": 1, "lang": -2},
    "pos": [-1, 2],  # a Rust tuple
    "role": "Admin",  # a unit enum variant
    "other": {"Member": {"since": 2020}},  # a struct variant: {name: fields}
}


def test_rust_written_value_reads_as_a_dict_and_back() -> None:
    rust = bytes.fromhex(RUST_PROFILE_HEX)
    assert shoal.unpack(rust) == PROFILE
    # Written back from Python, byte for byte what Rust wrote.
    assert shoal.pack(PROFILE) == rust


def test_python_written_value_is_what_rust_reads() -> None:
    python = {
        "role": "Admin",
        "other": {"Member": {"since": 2020}},
        "pos": (-1, 2),
        "prefs": {"lang": -2, "dark": 1},
        "avatar": b"\x00\x01\xff",
        "tags": ["a", "b"],
        "score": 2,
        "admin": False,
        "age": 31,
        "name": "alice",
    }
    assert shoal.pack(python).hex() == PYTHON_PROFILE_HEX


def test_rust_bytes_survive_the_daemon(daemon: Daemon, ns: str) -> None:
    with shoal.Client(daemon.socket) as c:
        c.set(ns + "profile", bytes.fromhex(RUST_PROFILE_HEX))
        assert c.get_value(ns + "profile") == PROFILE
        c.set_value(ns + "profile", PROFILE)
        assert c.get(ns + "profile") == bytes.fromhex(RUST_PROFILE_HEX)


def test_codec_errors() -> None:
    import pytest

    with pytest.raises(shoal.CodecError):
        shoal.unpack(b"\xc1")
    with pytest.raises(shoal.CodecError):
        shoal.pack(object())


def test_headers_match_the_rust_client() -> None:
    # The cases of client/src/ratelimit.rs's unit tests.
    denied = Decision("api", False, 10, 0, reset_after_ms=2_001, retry_after_ms=1_001, window_ms=1_500)
    assert denied.headers() == [
        ("ratelimit-policy", '"api";q=10;w=2'),
        ("ratelimit", '"api";r=0;t=3'),
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "3"),
        ("retry-after", "2"),
    ]
    allowed = Decision("api", True, 10, 3, reset_after_ms=2_001, retry_after_ms=0, window_ms=None)
    assert allowed.headers() == [
        ("ratelimit", '"api";r=3;t=3'),
        ("x-ratelimit-limit", "10"),
        ("x-ratelimit-remaining", "3"),
        ("x-ratelimit-reset", "3"),
    ]
    assert allowed.retry_after_secs() == 0
    assert Decision("api", False, 1, 0, 0, 0).retry_after_secs() == 1
    assert Decision("api", False, 1, 0, 0, 3000).retry_after_secs() == 3
    weird = Decision('we"ird\\näme', True, 10, 3, 2_001, 0)
    assert dict(weird.headers())["ratelimit"] == '"we\\"ird\\\\n_me";r=3;t=3'


def test_cookie_matches_the_rust_client() -> None:
    import pytest

    token = "q3QzJ8Y2rX0nVb1mK9wT5eH7uA4cL6dF2gP8sZ1oR3i"
    c = shoal.SessionCookie()
    assert (
        c.set_cookie(token, 1_000_000 + 3_600_000, now_ms=1_000_000)
        == f"__Host-session={token}; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"
    )
    assert "Max-Age=2;" in c.set_cookie(token, 1_001, now_ms=0)
    assert "Max-Age=0;" in c.set_cookie(token, 5, now_ms=10)
    assert c.set_cookie("x\r\nSet-Cookie: y", 2**63) == c.clear_cookie()
    assert shoal.SessionCookie("sid").clear_cookie() == "sid=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"
    for bad in ("bad name", "a=b", ""):
        with pytest.raises(ValueError):
            shoal.SessionCookie(bad)
    assert c.token_from_header(f"theme=dark; __Host-session={token}; lang=en") == token
    assert c.token_from_header(f'__Host-session="{token}"') == token
    assert c.token_from_header(f"  __Host-session = {token} ") == token
    assert (
        c.token_from_header(f"x__Host-session=nope; __Host-session=; __Host-session=a b; __Host-session={token}")
        == token
    )
    assert c.token_from_header("theme=dark") is None
    assert c.token_from_header("") is None
    assert c.token_from_header(";;=;") is None
