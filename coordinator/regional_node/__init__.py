"""A regional aggregator process (issue 7, hierarchical aggregation): one per hospital network.

Downstream it speaks the coordinator protocol to its silos (they point node.toml at it and
run unchanged); upstream it speaks the silo protocol and joins the central coordinator as
ONE participant whose weight is the sum of its silos' weights. Per round it forwards one
update: the study's rule over its silos' updates in the clear (coordinator.regional.
RegionalAggregate), or under CKKS the ciphertext sum of their updates, never decrypted
(EncryptedRegionalAggregate; the region never holds a secret key). Under CKKS the study
secret is wrapped for each of its silos ("<region>/<silo>", coordinator.key_recipients),
whoever the key holder is; the region only passes each silo its own wrapped key.

    config.py    RegionalConfig (pydantic)
    region.py    its silos, the studies proposed to them, the next task of each silo
    work.py      what one relayed task gathers and the one answer forwarded upstream
    relay.py     the upstream loop (one silo of the central coordinator, through the silo's own
                 client, coordinator.api.client)
    service.py   the downstream gRPC servicer
    server.py    RegionalAggregator: wires the above into one process
"""
