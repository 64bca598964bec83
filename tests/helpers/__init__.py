"""What several test modules share: data makers, the native-path switches, tiny models.

Imported as ``tests.helpers.<module>``; nothing here is a test.
"""
