"""Small ports for side effects (key-value, mail), each with an embedded and a production driver."""
