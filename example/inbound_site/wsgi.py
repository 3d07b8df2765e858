"""WSGI entry point of the mirror project."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inbound_site.settings")
application = get_wsgi_application()
