#!/bin/sh
# Initialises the data directory on first start, then runs the supplier.
# SILT_NAME and SILT_ID_SERVER name the supplier; other settings come from
# SILT_SUPPLIER_* variables and the arguments.
set -e
data="${SILT_SUPPLIER_DATA:-/data}"
if [ ! -f "$data/node.key" ]; then
    /usr/local/bin/silt-supplier init --data "$data" \
        --name "${SILT_NAME:?set SILT_NAME}" \
        --id-server "${SILT_ID_SERVER:?set SILT_ID_SERVER}" \
        --capacity "${SILT_CAPACITY:-10 GiB}"
fi
exec /usr/local/bin/silt-supplier run --data "$data" "$@"
