import os

from kiln_app import label

os.makedirs("dist", exist_ok=True)
with open("dist/label.txt", "w") as f:
    f.write(label(7) + "\n")
print("python-app: built dist/label.txt")
