"""The drift monitor (`tinyops field monitor`): each device's field samples, one monitor interval
at a time, against the training split it was trained on: input drift per channel, the class mix
of the int8 outputs, and accuracy where labels came back. Statistics from scipy.stats (in the
main lock); no framework is imported."""
