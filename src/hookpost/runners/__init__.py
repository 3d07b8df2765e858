"""Ways to run deliveries other than ``manage.py hookpost_worker``, each behind its optional extra."""
