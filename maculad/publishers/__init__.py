"""Publishers: the route table pushed out to other systems (PowerDNS)."""
