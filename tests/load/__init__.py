"""Load testing for `POST /route`: the load tester, the ceiling app it is compared with, and `make load`."""
