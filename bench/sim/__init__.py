"""`flying sim`: the cluster at GPU scale, by discrete-event simulation (SimPy).

The router's own classify / placement / policy modules decide; simulated nodes step
instances by a measured or roofline cost profile (`profile`), one event per step span.
"""
