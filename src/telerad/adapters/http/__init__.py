"""What every HTTP adapter shares: authentication, the site scope of a request, and request auditing."""
