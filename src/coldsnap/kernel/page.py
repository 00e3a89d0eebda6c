"""The page size: defined here once; every layer imports it from here."""
import mmap

PAGE_SIZE = mmap.PAGESIZE
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
