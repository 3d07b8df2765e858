"""How the API pages its lists: numbered pages for endpoints and attempts, a cursor for deliveries."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination, PageNumberPagination


class PagePagination(PageNumberPagination):
    """``?page=2&page_size=100``: numbered pages of at most 500 rows (50 by default)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class DeliveryCursorPagination(CursorPagination):
    """``?cursor=…``: newest deliveries first, by id, so a page costs the same however deep it is.

    Deliveries pile up by the million; numbered pages would count them all on every
    request and shift under a client as new ones arrive.
    """

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"
