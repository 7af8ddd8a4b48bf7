module kiln.test/goapp

go 1.19

require kiln.test/pad v1.0.0
