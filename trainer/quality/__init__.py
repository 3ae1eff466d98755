"""Image quality control (torch-free): which images should no annotator spend a label on?"""
