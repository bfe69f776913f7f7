"""JWT verification (HS256 and RS256), roles, and who a request may act for."""

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.auth import Principal, TokenVerifier, acting_barber_id, issue_token
from shared.errors import ProblemError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


def test_hs256_round_trip():
    verifier = TokenVerifier(secret=SECRET)
    principal = verifier.verify(issue_token(SECRET, 42, "barber"))
    assert principal == Principal(subject="42", role="barber")
    assert principal.barber_id == 42 and not principal.is_privileged


def test_rs256_round_trip_and_hs256_token_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = TokenVerifier(public_key=public)
    assert verifier.verify(issue_token(SECRET, 1000, "admin", private_key=private)).is_privileged
    with pytest.raises(ProblemError) as info:
        verifier.verify(issue_token(SECRET, 1000, "admin"))
    assert info.value.status == 401


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "1", "role": "barber", "exp": int(time.time()) - 60},  # expired
        {"sub": "1", "role": "owner", "exp": int(time.time()) + 60},  # unknown role
        {"sub": "1", "exp": int(time.time()) + 60},  # no role
        {"role": "barber", "exp": int(time.time()) + 60},  # no subject
        {"sub": "1", "role": "barber"},  # no expiry
        {"sub": "1", "role": ["admin"], "exp": int(time.time()) + 60},  # a list is not a role
        {"sub": "1", "role": {"r": "admin"}, "exp": int(time.time()) + 60},
        {"sub": "1", "role": 3, "exp": int(time.time()) + 60},
        {"sub": "0", "role": "barber", "exp": int(time.time()) + 60},  # ids start at 1
        {"sub": "-5", "role": "barber", "exp": int(time.time()) + 60},
        {"sub": -5, "role": "barber", "exp": int(time.time()) + 60},
        {"sub": "2147483648", "role": "barber", "exp": int(time.time()) + 60},  # beyond int32
        {"sub": 99999999999999999999, "role": "admin", "exp": int(time.time()) + 60},
        {"sub": "ops", "role": "admin", "exp": int(time.time()) + 60},  # not an id
        {"sub": "12a", "role": "barber", "exp": int(time.time()) + 60},
        {"sub": "１２", "role": "barber", "exp": int(time.time()) + 60},  # full-width digits
        {"sub": " 12", "role": "barber", "exp": int(time.time()) + 60},
        {"sub": "012", "role": "barber", "exp": int(time.time()) + 60},
        {"sub": True, "role": "barber", "exp": int(time.time()) + 60},
        {"sub": 1.5, "role": "barber", "exp": int(time.time()) + 60},
        {"sub": None, "role": "barber", "exp": int(time.time()) + 60},
    ],
)
def test_bad_claims_are_401(claims):
    with pytest.raises(ProblemError) as info:
        TokenVerifier(secret=SECRET).verify(jwt.encode(claims, SECRET, algorithm="HS256"))
    assert info.value.status == 401 and info.value.code == "unauthorized"


@pytest.mark.parametrize(("sub", "user_id"), [("1", 1), (7, 7), ("2147483647", 2**31 - 1)])
def test_subjects_that_are_user_ids(sub, user_id):
    token = jwt.encode({"sub": sub, "role": "barber", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    principal = TokenVerifier(secret=SECRET).verify(token)
    assert principal.user_id == principal.barber_id == user_id


def test_wrong_signature_and_garbage_are_401():
    verifier = TokenVerifier(secret=SECRET)
    for token in (issue_token("another-secret-that-is-long-enough-for-hs256", 1, "barber"), "not.a.token", ""):
        with pytest.raises(ProblemError):
            verifier.verify(token)


def test_none_algorithm_is_refused():
    token = jwt.encode({"sub": "1", "role": "admin", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(ProblemError):
        TokenVerifier(secret=SECRET).verify(token)


def test_acting_barber_id():
    barber = Principal("7", "barber")
    admin = Principal("1000", "admin")
    assert acting_barber_id(barber, None) == 7
    assert acting_barber_id(barber, 7) == 7
    with pytest.raises(ProblemError) as info:
        acting_barber_id(barber, 8)
    assert info.value.status == 403
    assert acting_barber_id(admin, 8) == 8
    with pytest.raises(ProblemError) as info:
        acting_barber_id(admin, None)
    assert info.value.status == 422


@pytest.mark.parametrize("service", ["router", "external", "collections", "analytics"])
def test_every_route_is_public_or_names_its_roles(service):
    """Deny by default: `shared.edge` answers 403 on an authenticated route naming no roles, so a
    route that forgot them would be unusable, not open; this lists any such route up front."""
    import re

    from shared.edge import ROLES_OPT
    from shared.service import PUBLIC_PATHS
    from tools.openapi import build

    public = re.compile("|".join(PUBLIC_PATHS))
    app = build(service)
    unnamed = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            methods = set(getattr(handler, "http_methods", ())) - {"OPTIONS"}
            if not methods or public.search(route.path) or handler.opt.get("exclude_from_auth"):
                continue
            allowed = handler.opt.get(ROLES_OPT)
            if not allowed or not set(allowed) <= {"barber", "admin", "service"}:
                unnamed.append(f"{sorted(methods)} {route.path}")
    assert not unnamed, unnamed
    assert any(handler.opt.get(ROLES_OPT) for route in app.routes for handler in getattr(route, "route_handlers", []))
