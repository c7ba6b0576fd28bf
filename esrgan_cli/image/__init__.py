"""Image files in and out: decoding (with the decoder's own messages captured), encoding, animations and multi-page
files, and resizing.
"""
