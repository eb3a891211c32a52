"""AWS stand-ins for the namespace lab: moto's EC2 and a fake IMDS, served from the hub.

Run in the hub namespace (``ip netns exec <hub> python aws_hub_fakes.py --ready FILE
--hosts 198.18.0.11,...``): it binds only to the hub address, builds one VPC whose
instances have the lab hosts' underlay addresses as private IPs, and answers metadata by
the requester's source address, so each lab host is one instance with one ENI. ``GET
/lab/status`` on the IMDS port gives the instances and every route table as JSON.
:class:`AwsHubFakes` starts and stops it (by PID) from the test process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flannel.testing.hub import HubProcess

HUB_ADDR = "198.18.0.1"
EC2_PORT = 5000
IMDS_PORT = 8773
REGION = "us-east-1"
EC2_URL = f"http://{HUB_ADDR}:{EC2_PORT}"
IMDS_URL = f"http://{HUB_ADDR}:{IMDS_PORT}"
TOKEN = "fake-lab-imds-token"

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}
"""Environment for the fakes and the daemons: dummy keys, no config files, no real IMDS."""


def build_vpc(ec2: Any, addresses: list[str]) -> dict[str, dict[str, str]]:
    """One VPC and subnet holding one instance per lab host: address -> instance, ENI."""
    vpc_id = ec2.create_vpc(CidrBlock="198.18.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="198.18.0.0/24")["Subnet"]["SubnetId"]
    instances: dict[str, dict[str, str]] = {}
    for address in addresses:
        inst = ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            SubnetId=subnet_id,
            PrivateIpAddress=address,
        )["Instances"][0]
        instances[address] = {
            "instance_id": inst["InstanceId"],
            "eni_id": inst["NetworkInterfaces"][0]["NetworkInterfaceId"],
        }
    return instances


def serve_imds(ec2: Any, instances: dict[str, dict[str, str]]) -> ThreadingHTTPServer:
    """The metadata service of every lab instance, told apart by source address."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: str, kind: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            if self.path == "/latest/api/token":
                self._reply(200, TOKEN)
            else:
                self._reply(403, "Forbidden")

        def do_GET(self) -> None:
            if self.path == "/lab/status":
                tables = ec2.describe_route_tables()["RouteTables"]
                doc = {"instances": instances, "route_tables": tables}
                self._reply(200, json.dumps(doc, default=str), "application/json")
                return
            me = instances.get(self.client_address[0])
            if me is None:
                self._reply(404, f"no lab instance has address {self.client_address[0]}")
                return
            answers = {
                "/latest/meta-data/instance-id": me["instance_id"],
                "/latest/meta-data/placement/region": REGION,
                "/latest/meta-data/placement/availability-zone": REGION + "a",
            }
            if self.path in answers:
                self._reply(200, answers[self.path])
            else:
                self._reply(404, "Not Found")

    return ThreadingHTTPServer((HUB_ADDR, IMDS_PORT), Handler)


class AwsHubFakes(HubProcess):
    """This script in a lab's hub namespace (``start()`` returns address -> instance, ENI)."""

    def __init__(self, hub: str, workdir: Path, addresses: list[str]) -> None:
        super().__init__(
            hub,
            workdir,
            __file__,
            ["--hosts", ",".join(addresses)],
            label="aws-fakes",
            env=DUMMY_ENV,
        )

    def status(self) -> dict[str, Any]:
        """``GET /lab/status`` (read from inside the hub)."""
        doc: dict[str, Any] = self.get_json(IMDS_URL + "/lab/status")
        return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ready", type=Path, required=True, help="file written once serving")
    parser.add_argument("--hosts", required=True, help="comma-separated host addresses")
    args = parser.parse_args()
    os.environ.update(DUMMY_ENV)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    import boto3
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address=HUB_ADDR, port=EC2_PORT, verbose=False)
    moto.start()
    ec2 = boto3.client("ec2", endpoint_url=EC2_URL, region_name=REGION)
    instances = build_vpc(ec2, args.hosts.split(","))
    imds = serve_imds(ec2, instances)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=imds.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    args.ready.write_text(json.dumps(instances))
    while not stop.wait(0.5):
        pass
    imds.shutdown()
    imds.server_close()
    thread.join()
    moto.stop()


if __name__ == "__main__":
    main()
