"""The differentiable primitives, one Function subclass per op, grouped by kind."""
