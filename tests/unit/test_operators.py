"""Operators in process: roles and what they allow, credentials and sessions that name their
operator (and any other text refused, never raised), and the login gate's limit per name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from packdist.errors import InvalidName, RateLimited
from packdist.site import gate, operator
from packdist.site.operator import Role
from packdist.site.operator_book import add_operator, remove_operator
from tests.fuzzing import fuzz, tried


def test_each_role_allows_what_the_ones_below_it_do() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.VIEWER)
    assert not Role.OPERATOR.allows(Role.ADMIN)
    assert Role.VIEWER.allows(Role.VIEWER) and not Role.VIEWER.allows(Role.OPERATOR)


def test_a_credential_names_its_operator_and_checks_only_against_it(tmp_path: Path) -> None:
    admin_password = operator.create(tmp_path)
    vera = add_operator(tmp_path, "vera", Role.VIEWER)
    operators = operator.load(tmp_path)
    assert operators is not None
    found = operators.for_password(vera)
    assert found is not None and found.name == "vera" and found.check_password(vera)
    admin = operators.for_password(admin_password)
    assert admin is not None and not admin.check_password(vera)
    # vera's secret under admin's name is admin's credential to check, and wrong
    swapped = f"pdo_admin_{vera[-24:]}"
    assert operator.looks_like_password(swapped)
    assert admin is operators.for_password(swapped) and not admin.check_password(swapped)


def test_a_session_is_its_operators_only_and_ends_with_it(tmp_path: Path) -> None:
    operator.create(tmp_path)
    add_operator(tmp_path, "vera", Role.VIEWER)
    operators = operator.load(tmp_path)
    assert operators is not None
    vera, admin = operators.get("vera"), operators.get("admin")
    assert vera is not None and admin is not None
    cookie = vera.new_session(60)
    assert operators.for_session(cookie) is vera
    claims_admin = cookie.replace("v2.vera.", "v2.admin.", 1)  # the MAC is vera's
    assert operators.for_session(claims_admin) is None
    remove_operator(tmp_path, "vera")
    after = operator.load(tmp_path)
    assert after is not None and after.for_session(cookie) is None


cookie_text = st.one_of(
    st.text(max_size=120),
    st.from_regex(r"v2\.[A-Za-z0-9._-]{1,70}\.[0-9]{1,13}\.[A-Za-z0-9_-]{1,65}\..{0,50}"),
    st.builds(
        lambda name, rest: f"v2.{name}.{rest}",
        st.sampled_from(["admin", "vera", "a.b", "x" * 64, "", "é"]),
        st.text(max_size=80),
    ),
)


@fuzz(300)
@given(cookie_text)
def test_a_session_cookie_of_any_characters_is_refused_or_names_an_operator(cookie: str) -> None:
    tried("operator session cookie")
    name = operator.session_name(cookie)
    assert name is None or operator.check_name(name) == name
    assert _OPERATORS.for_session(cookie) is None  # no MAC of ours: never accepted


credential_text = st.one_of(
    st.text(max_size=120),
    st.from_regex(r"pdo_[A-Za-z0-9._-]{0,70}_?[A-Za-z0-9_-]{20,28}"),
)


@fuzz(300)
@given(credential_text)
def test_a_credential_of_any_characters_names_a_valid_operator_or_nobody(text: str) -> None:
    tried("operator credential shape")
    if not operator.looks_like_password(text):
        return
    name = operator.named_in(text)
    assert name is None or operator.check_name(name) == name
    found = _OPERATORS.for_password(text)
    assert found is None or found.name == (name or "admin")


def _operators() -> operator.Operators:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="packdist-ops-"))
    operator.create(root)
    add_operator(root, "vera", Role.VIEWER)
    found = operator.load(root)
    assert found is not None
    return found


_OPERATORS = _operators()


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a/b", "é", "x" * 65, "a\n"])
def test_a_bad_operator_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        operator.check_name(name)


def test_guesses_at_one_name_from_many_addresses_are_limited_and_a_right_one_gives_back() -> None:
    async def main() -> tuple[int, int]:
        g = gate.PasswordGate()
        wrong = 0
        for i in range(20):
            try:
                await g.check(f"10.2.0.{i}", lambda: False, name="admin")
                wrong += 1
            except RateLimited as exc:
                assert "for operator admin" in exc.message
        right = 0
        for i in range(20):  # another name: its own bucket; right answers cost it nothing
            await g.check(f"10.3.0.{i % 2}", lambda: True, name="vera")
            right += 1
            await asyncio.sleep(0)
        g.close()
        return wrong, right

    monkey = pytest.MonkeyPatch()
    monkey.setattr(gate, "SITE_BURST", 100.0)
    monkey.setattr(gate, "PER_CLIENT_BURST", 100.0)
    try:
        wrong, right = asyncio.run(main())
    finally:
        monkey.undo()
    assert wrong == gate.PER_NAME_BURST
    assert right == 20
