"""Drives bronze-discovery with py-consul, a real third-party Consul client.

Usage: consul_client.py <port>. Prints one JSON object of what it saw; the
Rust test asserts on it.
"""
import json
import sys
import threading
import time

import consul

c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
seen = {}

seen["self_dc"] = c.agent.self()["Config"]["Datacenter"]
seen["leader"] = c.status.leader()
c.agent.service.register("web", service_id="web-1", address="10.0.0.1", port=8080, tags=["v1"],
                         meta={"version": "1"}, check=consul.Check.ttl("30s"))
c.agent.service.register("web", service_id="web-2", address="10.0.0.2", port=8081, tags=["v2"])
c.agent.check.ttl_pass("service:web-1", "all good")

index, services = c.catalog.services()
seen["catalog_services"] = services
seen["catalog_index_is_int"] = int(index) > 0
index, nodes = c.catalog.service("web")
seen["catalog_web"] = sorted((n["ServiceID"], n["ServiceAddress"], n["ServicePort"]) for n in nodes)
index, healthy = c.health.service("web", passing=True)
seen["passing"] = sorted(n["Service"]["ID"] for n in healthy)
seen["passing_checks"] = [ch["Status"] for n in healthy for ch in n["Checks"]]
seen["agent_services"] = sorted(c.agent.services().keys())

# A blocking query woken by a registration made meanwhile.
def later():
    time.sleep(0.3)
    c.agent.service.register("web", service_id="web-3", address="10.0.0.3", port=8082)
threading.Thread(target=later).start()
start = time.time()
new_index, after = c.health.service("web", index=index, wait="20s")
seen["blocking_woke"] = int(new_index) > int(index) and time.time() - start < 15
seen["after"] = sorted(n["Service"]["ID"] for n in after)

c.agent.check.ttl_fail("service:web-1", "broken")
index, healthy = c.health.service("web", passing=True)
seen["passing_after_fail"] = sorted(n["Service"]["ID"] for n in healthy)
c.agent.service.deregister("web-2")
seen["agent_services_after"] = sorted(c.agent.services().keys())
seen["nodes"] = [n["Node"] for n in c.catalog.nodes()[1]]
try:
    c.agent.service.register("web", service_id="bad", port=99999)
    seen["bad_port"] = "accepted"
except consul.ConsulException as e:
    seen["bad_port"] = str(e)
print(json.dumps(seen))
