"""The users page: admins only, each user's role and sites, and role changes through fleet.access.set_role."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from core import access
from core.models import AuditLog, Role
from dashboard.users import role_shown, with_role
from fleet.access import set_role
from fleet.models import Site

pytestmark = pytest.mark.django_db

URL = "/users/"
User = get_user_model()


def operator_of(*sites: Site, name: str = "olga") -> Any:
    user = User.objects.create_user(name, password=f"pw-{name}-123")
    set_role(actor=None, user=user, kind="operator", sites=sites)
    return user


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def roles(body: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-user="([^"]+)">.*?data-testid="role">(\w+)<', body, re.S))


@pytest.fixture
def people(admin_user: Any, viewer_user: Any, site: Site, other_site: Site) -> dict[str, Any]:
    return {
        "root": User.objects.create_superuser("root", password="pw-root-123"),
        "olga": operator_of(site, other_site),
        "staff-viewer": _with_role(User.objects.create_user("sam", is_staff=True), "viewer"),
        "plain-admin": _with_role(User.objects.create_user("ada"), "admin"),
    }


def _with_role(user: Any, kind: str) -> Any:
    Role.objects.create(user=user, kind=kind)
    return user


# --- who may ------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client: Client) -> None:
    assert client.get(URL)["Location"].startswith("/login/")


@pytest.mark.parametrize("who", ["victor", "olga"])
def test_anyone_but_an_admin_is_refused_even_a_forged_post(who: str, people: dict[str, Any], viewer_user: Any) -> None:
    client = signed_in(User.objects.get(username=who))
    before = AuditLog.objects.count()
    assert client.get(URL).status_code == 403
    assert client.get(f"/users/{viewer_user.pk}/role/").status_code == 403
    forged = {"kind": "admin", "reason": "promote me"}
    assert client.post(f"/users/{User.objects.get(username=who).pk}/role/", forged).status_code == 403
    assert client.post(f"/users/{viewer_user.pk}/role/", forged).status_code == 403
    assert access.role_of(User.objects.get(username=who)) != access.ADMIN
    assert AuditLog.objects.count() == before


def test_a_role_change_needs_the_csrf_token(admin_user: Any, viewer_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(f"/users/{viewer_user.pk}/role/", {"kind": "admin", "reason": "x"}).status_code == 403
    assert not Role.objects.filter(user=viewer_user).exists()


# --- the list -----------------------------------------------------------------------------


def test_every_user_is_listed_with_their_role_and_sites(admin_client: Client, people: dict[str, Any]) -> None:
    body = admin_client.get(URL).content.decode()
    assert roles(body) == {
        "ada": "admin",
        "alice": "admin",
        "olga": "operator",
        "root": "admin",
        "sam": "viewer",
        "victor": "viewer",
    }
    olga_row = re.search(r'<tr data-user="olga">.*?</tr>', body, re.S)
    assert olga_row and '<a class="chip" href="/sites/plant-a/">plant-a</a>' in olga_row[0]
    assert '<a class="chip" href="/sites/plant-b/">plant-b</a>' in olga_row[0]
    assert "superuser" in body and "None" not in body


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"role": "admin"}, {"ada", "alice", "root"}),
        ({"role": "operator"}, {"olga"}),
        ({"role": "viewer"}, {"sam", "victor"}),
        ({"q": "O"}, {"olga", "root", "victor"}),
    ],
)
def test_the_list_filters_by_role_and_name(
    admin_client: Client, people: dict[str, Any], params: dict[str, str], expected: set[str]
) -> None:
    assert set(roles(admin_client.get(URL, params).content.decode())) == expected


def test_an_unknown_role_filter_is_a_400(admin_client: Client) -> None:
    response = admin_client.get(URL, {"role": "owner"})
    assert response.status_code == 400 and 'data-testid="filter-error"' in response.content.decode()


def test_the_shown_role_and_the_role_filter_agree_with_core_access(people: dict[str, Any]) -> None:
    for user in User.objects.select_related("role"):
        assert role_shown(user) == access.role_of(User.objects.get(pk=user.pk)), user.username
    for kind, _ in Role.KINDS:
        expected = {u.username for u in User.objects.all() if access.role_of(u) == kind}
        assert set(with_role(User.objects.all(), kind).values_list("username", flat=True)) == expected, kind


def test_the_list_query_count_does_not_grow_with_users(admin_client: Client, site: Site, other_site: Site) -> None:
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(URL).status_code == 200
        return len(queries)

    operator_of(site, name="op-0")
    few = count()
    for i in range(1, 12):
        operator_of(site, other_site, name=f"op-{i}")
        User.objects.create_user(f"viewer-{i}")
    assert count() == few


# --- changing a role ----------------------------------------------------------------------


def test_an_admin_makes_a_viewer_an_operator_of_a_site_and_it_is_audited(
    admin_client: Client, admin_user: Any, viewer_user: Any, site: Site, other_site: Site
) -> None:
    page = admin_client.get(f"/users/{viewer_user.pk}/role/").content.decode()
    assert 'value="viewer"' in page and "Plant A (plant-a)" in page

    response = admin_client.post(
        f"/users/{viewer_user.pk}/role/",
        {"kind": "operator", "sites": ["plant-b"], "reason": "runs the night shift at B"},
        follow=True,
    )

    assert response.redirect_chain == [(URL, 302)]
    assert "victor is now an operator of plant-b." in response.content.decode()
    viewer_user.refresh_from_db()
    assert access.role_of(viewer_user) == access.OPERATOR
    assert list(viewer_user.operated_sites.all()) == [other_site]
    entry = AuditLog.objects.get(action="user.set_role")
    assert (entry.actor, entry.reason, entry.data["role"], entry.data["sites"]) == (
        admin_user,
        "runs the night shift at B",
        "operator",
        ["plant-b"],
    )


def test_an_admin_makes_an_operator_a_viewer_and_their_sites_go(
    admin_client: Client, site: Site, people: dict[str, Any]
) -> None:
    olga = people["olga"]
    response = admin_client.post(f"/users/{olga.pk}/role/", {"kind": "viewer", "sites": ["plant-a"], "reason": "moved"})
    assert response.status_code == 302
    assert Role.objects.get(user=olga).kind == "viewer" and not olga.operated_sites.exists()


@pytest.mark.parametrize(
    ("who", "form", "error"),
    [
        ("victor", {"kind": "operator", "reason": "no sites"}, "An operator needs at least one site"),
        ("alice", {"kind": "viewer", "reason": "step down"}, "cannot take their own admin role away"),
        ("root", {"kind": "viewer", "reason": "nope"}, "is a superuser, and so always an admin"),
        ("victor", {"kind": "admin", "reason": " "}, "Say why the role changes."),
        ("victor", {"kind": "owner", "reason": "x"}, "Select a valid choice"),
    ],
)
def test_a_refused_change_says_why_and_changes_nothing(
    admin_client: Client, people: dict[str, Any], who: str, form: dict[str, str], error: str
) -> None:
    user = User.objects.get(username=who)
    before = access.role_of(user)
    response = admin_client.post(f"/users/{user.pk}/role/", form)
    assert response.status_code == 400 and error in response.content.decode()
    assert access.role_of(User.objects.get(pk=user.pk)) == before
    assert not AuditLog.objects.filter(action="user.set_role", target_id=str(user.pk)).exists()


def test_an_unknown_user_is_404(admin_client: Client) -> None:
    assert admin_client.get("/users/999999/role/").status_code == 404
