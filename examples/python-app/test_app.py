import unittest

from kiln_app import label


class LabelTest(unittest.TestCase):
    def test_pads(self):
        self.assertEqual(label(42), "build-000042")

    def test_long_numbers_stay(self):
        self.assertEqual(label(1234567), "build-1234567")


if __name__ == "__main__":
    unittest.main()
