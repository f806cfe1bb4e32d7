"""Independent parameter arithmetic for the exact-count tests."""


def conv(c_in, c_out, k=3):
    return c_in * c_out * k * k


def bn(c):
    return 2 * c
