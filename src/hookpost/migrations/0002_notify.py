"""PostgreSQL only: notify listening workers when events or deliveries are inserted.

A statement-level trigger costs the writer no round trip, and NOTIFY is
transactional: workers hear of the rows when (and only if) they commit.
"""

from django.db import migrations

CHANNEL = "hookpost"


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    schema_editor.execute(
        "CREATE OR REPLACE FUNCTION hookpost_notify() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME); RETURN NULL; END $$"
    )
    for model_name in ("Event", "Delivery"):
        table = apps.get_model("hookpost", model_name)._meta.db_table
        schema_editor.execute(
            f"CREATE TRIGGER {quote(table + '_notify')} AFTER INSERT ON {quote(table)} "
            "FOR EACH STATEMENT EXECUTE FUNCTION hookpost_notify()"
        )


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for model_name in ("Event", "Delivery"):
        table = apps.get_model("hookpost", model_name)._meta.db_table
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {quote(table + '_notify')} ON {quote(table)}")
    schema_editor.execute("DROP FUNCTION IF EXISTS hookpost_notify()")


class Migration(migrations.Migration):
    dependencies = [("hookpost", "0001_initial")]

    operations = [migrations.RunPython(create_triggers, drop_triggers, elidable=False)]
