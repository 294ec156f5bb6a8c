"""Who may call which API operation."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission


class IsStaffOrReadOnly(BasePermission):
    """Reads for everyone; a write only for signed-in staff who hold the model permission it needs.

    The default for every API view (REST_FRAMEWORK's DEFAULT_PERMISSION_CLASSES). A write view names what it
    needs in `write_permissions` (method -> "app.codename"), so a merchandiser, who is staff but may only view the
    catalog, is refused like anyone else. The shopper-facing posts (search by photo, detection, feedback) say
    AllowAny themselves.
    """

    message = "Only staff accounts with the permission to change the catalog may do this."

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return True
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        needed = getattr(view, "write_permissions", {}).get(request.method)
        return needed is None or user.has_perm(needed)
