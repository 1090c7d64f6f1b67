"""The resilience suite (`manage.py resilience`): the whole stack on loopback under load, faults and abuse."""
