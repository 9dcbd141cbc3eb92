"""core/: what every stage uses and that knows nothing of the others: errors and exit codes (`errors`), atomic
files (`fileio`), the console and progress bars (`progress`), devices and precision (`device`), multi-process
runs (`distributed`), the run lock (`runlock`) and the one schedule helper (`schedule`). Imports nothing else
from compressor.
"""
