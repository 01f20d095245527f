"""`make run`: the embedded gateway on the example policy, shown doing its job offline."""
