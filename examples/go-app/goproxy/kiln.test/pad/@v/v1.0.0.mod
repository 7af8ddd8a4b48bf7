module kiln.test/pad

go 1.19
