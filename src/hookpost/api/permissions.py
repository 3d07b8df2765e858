"""Who may see and change which endpoints: their owner, and staff holding the model permission."""

from __future__ import annotations

from typing import Literal

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from hookpost.models import Endpoint, EndpointQuerySet

Need = Literal["view", "change", "delete"]

# The permissions that open every endpoint to a staff user, per need; as in the admin,
# the right to change implies the right to view.
_PERMISSIONS: dict[Need, tuple[str, ...]] = {
    "view": ("hookpost.view_endpoint", "hookpost.change_endpoint"),
    "change": ("hookpost.change_endpoint",),
    "delete": ("hookpost.delete_endpoint",),
}


def sees_all(user: AbstractBaseUser | AnonymousUser, need: Need) -> bool:
    """Whether ``user`` may act on every endpoint for ``need``: staff with the model permission."""
    # Custom user models need not have PermissionsMixin: has_perm is looked up, not assumed.
    has_perm = getattr(user, "has_perm", None)
    return (
        user.is_authenticated
        and bool(getattr(user, "is_staff", False))
        and has_perm is not None
        and any(has_perm(permission) for permission in _PERMISSIONS[need])
    )


def endpoints_for(user: AbstractBaseUser | AnonymousUser, need: Need) -> EndpointQuerySet:
    """The endpoints ``user`` may act on for ``need``; anything outside it answers 404, never 403.

    A 403 would tell that the id exists: ids of other users' endpoints must not leak.
    """
    endpoints = Endpoint.objects.all()
    if not user.is_authenticated:
        return endpoints.none()
    if sees_all(user, need):
        return endpoints
    return endpoints.filter(owner_id=user.pk)
