"""Contract fakes of APIs that cannot be reached from the test machines."""
