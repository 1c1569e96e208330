"""Start nova-compute from python3-nova with the fake driver of tutela_aio.nova_fake.

Nova resolves ``compute_driver`` under the ``nova.virt.`` prefix only, so the module is
registered as ``nova.virt.tutela_fake`` before ``nova.cmd.compute.main`` runs.
Usage: python3 -m tutela_aio.nova_compute --config-file nova.conf
"""

import sys


def main():
    import nova.virt

    from tutela_aio import nova_fake

    sys.modules["nova.virt.tutela_fake"] = nova_fake
    nova.virt.tutela_fake = nova_fake
    sys.argv[0] = "nova-compute"
    from nova.cmd import compute

    return compute.main()


if __name__ == "__main__":
    sys.exit(main())
