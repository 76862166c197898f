"""The query that loads the device registry: active devices with their households.

Its rows, in this column order, are what gateway.core.registry.rows_to_registry_input
turns into registry input; the parameter is the list of device ids already loaded.
"""

__all__ = ["LOAD_SQL"]

LOAD_SQL = """
SELECT d.id, d.kind, d.model, d.household_id, d.installed_on,
       h.address, h.community, h.building, h.owner_name, h.owner_phone, h.owner_email,
       h.qmax_m3h
FROM devices d JOIN households h ON h.id = d.household_id
WHERE d.status = 'active' AND NOT (d.id = ANY(%s))
ORDER BY d.kind DESC, d.id
"""
