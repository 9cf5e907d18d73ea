"""perturbo.boards"""
