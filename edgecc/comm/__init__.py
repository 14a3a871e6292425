"""How master and workers reach each other: message streams (`Comm`) and listeners, by address scheme."""
