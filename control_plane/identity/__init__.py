"""Users, invitations, sign-in sessions and the principal behind each request."""
