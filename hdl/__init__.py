"""perturbo.hdl"""
