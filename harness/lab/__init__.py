"""The lab: the devices of a bench (boards, QEMU guests, simulators) as `lab.yaml` names them.

`inventory` reads and checks the file; the drivers that power and flash what it names live in
`harness.drivers`.
"""
