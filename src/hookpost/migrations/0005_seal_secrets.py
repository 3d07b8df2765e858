"""Seal (encrypt) the signing secrets of endpoints and the keys of sources that are stored in plaintext."""

from django.db import migrations, models

import hookpost.models
from hookpost import crypto, signing


def _fingerprint(secret):
    try:
        return signing.parse_secret(secret).fingerprint
    except ValueError:
        return ""


def seal(apps, schema_editor):
    alias = schema_editor.connection.alias
    Endpoint = apps.get_model("hookpost", "Endpoint")
    for endpoint in Endpoint.objects.using(alias).only("id", "secrets").iterator():
        if all(crypto.is_sealed(entry["key"]) for entry in endpoint.secrets):
            continue
        for entry in endpoint.secrets:
            if not crypto.is_sealed(entry["key"]):
                entry.setdefault("fingerprint", _fingerprint(entry["key"]))
                entry["key"] = crypto.seal(entry["key"])
        endpoint.save(update_fields=["secrets"])
    Source = apps.get_model("hookpost", "Source")
    for source in Source.objects.using(alias).only("id", "secrets").iterator():
        if not crypto.is_sealed(source.secrets):
            source.secrets = crypto.seal(source.secrets)
            source.save(update_fields=["secrets"])


def unseal(apps, schema_editor):
    alias = schema_editor.connection.alias
    Endpoint = apps.get_model("hookpost", "Endpoint")
    for endpoint in Endpoint.objects.using(alias).only("id", "secrets").iterator():
        for entry in endpoint.secrets:
            entry["key"] = crypto.unseal(entry["key"])
        endpoint.save(update_fields=["secrets"])
    Source = apps.get_model("hookpost", "Source")
    for source in Source.objects.using(alias).only("id", "secrets").iterator():
        source.secrets = crypto.unseal(source.secrets)
        source.save(update_fields=["secrets"])


class Migration(migrations.Migration):
    dependencies = [("hookpost", "0004_receiver")]

    operations = [
        migrations.AlterField(
            model_name="source",
            name="secrets",
            field=models.TextField(
                help_text="One key per line: whsec_… secrets (several while a sender rotates) or whpk_… "
                "ed25519 public keys. Sealed (encrypted) when saved.",
                validators=[hookpost.models.validate_verifying_keys],
            ),
        ),
        migrations.RunPython(seal, unseal, elidable=False),
    ]
